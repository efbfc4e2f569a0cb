"""Feature extraction: token losses (tokens.py), gradient features (gradients.py) and their store (store.py)."""
