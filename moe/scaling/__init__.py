"""Scaling studies: sweeps (a YAML grid expanded into runs, sweep.py), the power-law fit of validation loss against
training compute (fit.py, `python -m moe.scaling`) and a run's plots from its metrics.jsonl (plots.py,
`python -m moe.plot`)."""
