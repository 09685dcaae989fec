"""The report wing: what a person reads, drawn from plain values (no MLflow, no Keras).

- `plots`: matplotlib figures (a run's history, a comparison) and the plot workers of a fused sweep
- `tables`: markdown and terminal tables
- `groups`: runs grouped by what was trained (seeds aggregated): n, mean ± std, min, max, what was left out and why
- `sweep_plots`: a sweep's figures: a swept key against the metric, parallel coordinates, per-group curves

May import: the foundation (`src.paths`, `src.config`, `src.overrides`) only.
"""
