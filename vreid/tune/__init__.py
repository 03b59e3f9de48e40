"""Ray Tune sweeps of post-processing hyperparameters."""
