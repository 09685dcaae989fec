"""How a data split reaches Keras: what `fit`, `evaluate` and `predict` take, on every backend.

Images go to Keras as the uint8 numpy arrays they are (Keras slices and shuffles them per epoch,
the model scales them). Word-index datasets are CSR matrices. On TensorFlow, Keras's own adapter
turns them into sparse batches for a sparse `Dense` input (same accuracy as dense input, and cheap
for wide inputs such as imdb_best's 230,000 columns). Elsewhere Keras's sparse path is unusable (JAX's
BCOO batches took 22-37 s per IMDB epoch), so `MultiHotBatches` makes each batch's rows dense on the
host, a few MB at a time: the 25000x10000 matrix is never built.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import scipy.sparse

from ..data.datasets import Split


class MultiHotBatches(keras.utils.PyDataset):
    """Dense float32 batches of a CSR split, in an order reshuffled every epoch from `seed`."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0):
        super().__init__()
        self.x, self.y, self.batch_size, self.shuffle = split.x, split.y, batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(split)) if shuffle else np.arange(len(split))

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.x[rows].toarray(), self.y[rows]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.y))


def sparse_inputs() -> bool:
    """Whether models take word-index datasets as sparse batches (TensorFlow) or dense ones."""
    return keras.backend.backend() == "tensorflow"


def fit_args(split: Split, batch_size: int, shuffle: bool = False, seed: int = 0) -> dict:
    """Keyword arguments for model.fit/evaluate: x, y, batch_size and shuffle, or one PyDataset."""
    if scipy.sparse.issparse(split.x) and not sparse_inputs():
        return {"x": MultiHotBatches(split, batch_size, shuffle, seed)}
    return {"x": split.x, "y": split.y, "batch_size": batch_size, **({"shuffle": shuffle} if shuffle else {})}


def first(split: Split, n: int):
    """The first `n` samples as the model takes them (for predictions)."""
    x = split.x[:n]
    return x.toarray() if scipy.sparse.issparse(x) and not sparse_inputs() else x


def validation_data(split: Split, batch_size: int):
    """`validation_data` for model.fit: an (x, y) tuple, or a PyDataset."""
    args = fit_args(split, batch_size)
    return args["x"] if "y" not in args else (args["x"], args["y"])
