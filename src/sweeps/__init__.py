"""The sweeps wing: a multirun as one MLflow parent run that resumes.

- `sweep`: the parent run (a Hydra callback), its summary and the query for its children
- `manifest`: `sweep_manifest.json`, each point's identity and what a rerun does with it
- `launcher`: the resuming launcher around Hydra's (basic, or hydra-submitit-launcher's SLURM array)
- `search`: hydra/sweeper=optuna (ask/tell over Hydra jobs, pruning)

May import: the foundation, the tracking wing, the report wing. Never Keras: a sweep's driver does not train.
"""
