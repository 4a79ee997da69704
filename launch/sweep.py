"""Expand a scaling grid into runs and start them: here (in turn or side by side), over a hostfile, or as SLURM arrays.

    python launch/sweep.py recipes/scaling/tiny_grid.yaml --dry-run          # check every run, print its command
    python launch/sweep.py recipes/scaling/tiny_grid.yaml                    # run them one after another
    python launch/sweep.py recipes/scaling/tiny_grid.yaml --parallel auto    # side by side (again: resume)
    python launch/sweep.py recipes/scaling/tiny_grid.yaml --status           # state, step, tokens, val loss, ETA
    python launch/sweep.py recipes/scaling/dsmoe_paper_grid.yaml --hostfile hosts
    python launch/sweep.py recipes/scaling/dsmoe_paper_grid.yaml --slurm --gpus-per-node 8

The grid format and the expansion are in moe/scaling/sweep.py.
"""

import sys

from moe.scaling.sweep import main

if __name__ == "__main__":
    sys.exit(main())
