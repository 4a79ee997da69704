import sys

from moe.scaling.fit import main

sys.exit(main())
