"""Pure-PyTorch training: experiment recipes, the trainer, checkpoints. No Dagster here."""
