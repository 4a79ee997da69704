"""Training: the loop, optimizer groups, checkpoints and metrics."""
