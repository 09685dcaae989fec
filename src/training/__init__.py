"""The training wing: a Keras backend chosen and set up, a model built, trained and checkpointed.

- `backend`, `hardware`: which Keras backend, which device, before Keras is imported; `compilation_cache`: JAX's on disk
- `batches`: how a data split reaches Keras on each backend; `models`: the builders (MODELS); `loop`, `compiled`: Keras fit, or compiled epochs on JAX
- `callbacks`: per-epoch MLflow metrics, signals; `resume`: an epoch's checkpoint and the run it resumes
- `job`: how a run was started (`Job`), its run name and resume command (no Keras)
- `record`: a run's record, shared by every launcher: what a run is before it opens, what it logs, and its end

May import: the foundation, the data, tracking, report and sweeps wings (a run knows its sweep's parent). Keras only inside functions that run
after `backend.activate` (the backend must be chosen before the first `import keras`).
"""
