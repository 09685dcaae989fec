"""The data wing: Keras's `.npz` files found, checked against their sha256 and loaded as host arrays (`datasets`).

`python -m src.data download|check` is its command line (`__main__`). How a split reaches Keras (batches) is the
training wing's: it needs Keras.
May import: the foundation (`src.config`, `src.errors`, `src.paths`). Never Keras or a backend.
"""
