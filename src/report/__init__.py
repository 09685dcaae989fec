"""The report wing: what a person reads, drawn from plain values (no MLflow, no Keras).

- `plots`: matplotlib figures (a run's history, a comparison) and the plot workers of a fused sweep
- `tables`: markdown and terminal tables

May import: the foundation (`src.paths`) only.
"""
