"""Evaluation: pure PyTorch/NumPy, no Dagster (bits per byte per domain; benchmark tasks come next)."""
