"""`python -m moe.plot runs/<name> [--out DIR]`: a run's loss, throughput, expert-load and router plots from its
metrics.jsonl, without W&B. The work is moe/scaling/plots.py."""

import sys

from moe.scaling.plots import main

if __name__ == "__main__":
    sys.exit(main())
