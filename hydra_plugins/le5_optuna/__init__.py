"""`hydra/sweeper=optuna`: the project's Optuna sweeper (Hydra instantiates plugins only from `hydra_plugins`)."""
