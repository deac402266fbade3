"""ranksweep.sweeps: the command line, and (with Ray Tune and MLflow) the sweeper around the core."""
