"""A training run's folder: its checkpoints, the lock one run holds on it, and what a killed run left."""
