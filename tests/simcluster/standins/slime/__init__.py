"""simcluster stand-in of the slime package: only what train.py imports to parse its arguments."""
