"""Watching a run: the metrics file and samples, wandb, the progress line and plots."""
