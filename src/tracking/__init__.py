"""The tracking wing: everything a run says to MLflow, and nothing about training.

- `status`: a run's end status from what ended it (the one exception -> FINISHED / FAILED / KILLED rule)
- `store`: the tracking store (connect, search, run ids); `runs`: a run opened, resumed and always ended
- `outbox`: records a lost server missed, replayed later; `liveness`: runs whose process died, ended FAILED
- `auth`: credentials for a password-protected server (the environment, or a 0600 file)
- `names`: every tag and metric name; `provenance`, `redaction`, `inputs`: what a run records about itself

May import: the foundation (`src.errors`, `src.paths`, `src.preflight`) and MLflow. Never Keras or a backend:
`python -m src.compare`, `python -m src.outbox` and the sweeps use it without them.
"""
