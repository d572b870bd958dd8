"""Built-in architecture families; each module registers one `Family` (see `models/registry.py`)."""
