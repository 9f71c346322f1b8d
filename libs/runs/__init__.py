"""A training run's folder as the other scripts see it: its config and its checkpoints."""
