"""A training run's folder: its checkpoints, its recorded config, and what a killed run left. (The
lock a run holds on it is `libs.utils.lock`, which conversions and exports use too.)"""
