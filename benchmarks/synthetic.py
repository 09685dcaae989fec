"""MNIST- and IMDB-shaped synthetic files in Keras's .npz format, for machines without the real data.

    python -m benchmarks.synthetic DIR [--scale 1.0]

Full scale has the real files' sizes (MNIST 60,000 + 10,000 images; IMDB 25,000 + 25,000 reviews of
about 230 word ranks, Zipf-like, a few class-specific words), so epoch times are like the real ones;
the data are learnable but accuracies mean nothing. tests/conftest.py writes tiny versions for tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def write_mnist(path: Path, scale: float = 1.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 60000), ("test", 10000)):
        n = max(int(n * scale), 20)
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        r, c = np.divmod(y.astype(int), 5)
        for dr in range(7):  # a bright 7x5 block whose place encodes the digit
            for dc in range(5):
                x[np.arange(n), 2 + 12 * r + dr, 1 + 5 * c + dc] = 255
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    np.savez(path, **arrays)
    return path


def write_imdb(path: Path, scale: float = 1.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "test"):
        n = max(int(25000 * scale), 20)
        y = rng.integers(0, 2, n).astype(np.int64)
        lengths = np.clip(rng.lognormal(5.2, 0.6, n).astype(int), 10, 2500)
        words = np.minimum(rng.zipf(1.3, lengths.sum()), 88000)  # word ranks, as Keras stores them
        reviews = np.empty(n, dtype=object)
        for i, chunk in enumerate(np.split(words, np.cumsum(lengths)[:-1])):
            marker = rng.integers(1, 50, 5) if y[i] else rng.integers(50, 99, 5)
            reviews[i] = chunk.tolist() + (marker + 400).tolist()
        arrays[f"x_{split}"], arrays[f"y_{split}"] = reviews, y
    np.savez(path, **arrays)
    return path


def shrink(source: Path, path: Path, scale: float) -> Path:
    """The first `scale` of each split of a Keras .npz dataset file (real data, smaller: quick checks)."""
    from src.data.datasets import read_npz  # refuses anything but arrays in the file

    arrays = read_npz(Path(source))
    rng = np.random.default_rng(0)
    cut = {}
    for split in ("train", "test"):  # a random subset: IMDB's file is sorted by label
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        keep = np.sort(rng.permutation(len(y))[: max(int(len(y) * scale), 20)])
        cut[f"x_{split}"], cut[f"y_{split}"] = x[keep], y[keep]
    np.savez(path, **cut)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("directory")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the real sizes (default 1.0)")
    args = p.parse_args()
    folder = Path(args.directory)
    folder.mkdir(parents=True, exist_ok=True)
    print(write_mnist(folder / "mnist.npz", args.scale), write_imdb(folder / "imdb.npz", args.scale))


if __name__ == "__main__":
    main()
