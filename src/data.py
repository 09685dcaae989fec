"""Datasets as tf.data pipelines, read from Keras's own `.npz` files in a data directory.

The data directory holds the files Keras downloads (`mnist.npz`, `imdb.npz`), so offline
compute nodes train from a copy made on the login node:

    python -m src.data download            # fill the data directory (needs internet)
    python -m src.data check               # what is there, with Keras's sha256

Nothing here builds a whole dataset as one float tensor (the lab's 25000x10000 float64 IMDB
matrix is what ran the GPU out of memory): images stay uint8 and are scaled per batch, and
IMDB reviews stay lists of word indices that become sparse multi-hot batches.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "LE5_DATA_DIR"
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
# sha256 of Keras's downloads (the hashes keras.datasets checks).
SHA256 = {
    "mnist.npz": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    "imdb.npz": "69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f",
}
FILES = {"mnist": "mnist.npz", "imdb": "imdb.npz"}

# keras.datasets.imdb.load_data's conventions, which define the lab's train/validation split.
IMDB_SHUFFLE_SEED = 113
START_CHAR, OOV_CHAR, INDEX_FROM = 1, 2, 3


class DataError(RuntimeError):
    """A data file is missing or unreadable; the message names the file and the fix."""


def data_dir(configured: str | None = None) -> Path:
    """The data directory: the config value, else $LE5_DATA_DIR, else <project>/data."""
    chosen = configured or os.environ.get(DATA_DIR_ENV) or PROJECT_ROOT / "data"
    return Path(chosen).expanduser().resolve()


# ---------------------------------------------------------------------------------------------
# Reading the .npz files


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """IMDB's ragged reviews are object arrays, which numpy can only store pickled.

    Rebuilding them needs numpy's array constructors and nothing else, so any other global
    (os.system, eval, ...) in a tampered file is refused instead of executed.
    """

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _read_npy(raw: bytes) -> np.ndarray:
    try:
        return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
    except ValueError:  # an object array: its payload is a pickle stream after the header
        stream = io.BytesIO(raw)
        major, _ = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        reader(stream)
        return _ArrayOnlyUnpickler(stream).load()


def read_npz(path: Path, keys=("x_train", "y_train", "x_test", "y_test")) -> dict[str, np.ndarray]:
    """Read a Keras dataset file, refusing anything but numpy arrays inside it."""
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {name[:-4]: _read_npy(archive.read(name)) for name in archive.namelist() if name.endswith(".npy")}
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise KeyError(f"arrays {missing} not in the file")
        return arrays
    except Exception as err:  # zipfile.BadZipFile, EOFError, UnpicklingError, KeyError, ...
        raise DataError(
            f"{path} is corrupt or truncated ({type(err).__name__}: {err}).\n"
            f"Fix: delete it and fetch it again: python -m src.data download --dataset {path.stem} "
            f"--data-dir {path.parent}"
        ) from err


def locate(name: str, directory: Path, download: bool) -> Path:
    """The dataset's file in `directory`, downloading it through Keras when allowed."""
    path = directory / FILES[name]
    if path.is_file():
        return path
    reason = "downloads are off (dataset.download=false)"
    if download:
        try:
            return fetch(name, directory)
        except Exception as err:  # offline nodes: DNS or connection failures
            reason = f"the download failed ({type(err).__name__}: {err})"
    raise DataError(
        f"{FILES[name]} is not in the data directory {directory}, and {reason}.\n"
        f"Fix, either:\n"
        f"  - on a machine with internet (e.g. the login node): python -m src.data download --data-dir {directory}\n"
        f"  - or point at a folder that has Keras's {FILES[name]}: export {DATA_DIR_ENV}=/path/to/folder "
        f"(or data_dir=/path/to/folder)"
    )


def fetch(name: str, directory: Path) -> Path:
    """Download one dataset file through Keras into `directory`, checking Keras's sha256."""
    import keras

    directory.mkdir(parents=True, exist_ok=True)
    fname = FILES[name]
    path = keras.utils.get_file(
        fname=fname, origin=KERAS_ORIGIN + fname, file_hash=SHA256[fname], cache_dir=str(directory), cache_subdir="."
    )
    return Path(path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Arrays


def mnist_arrays(path: Path) -> dict[str, np.ndarray]:
    """uint8 images (N, 28, 28) and integer labels, as keras.datasets.mnist.load_data gives them."""
    a = read_npz(path)
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
            raise DataError(f"{path}: x_{split} has shape {x.shape}, expected (N, 28, 28) with N = len(y_{split})")
    return a


def imdb_sequences(path: Path, num_words: int, num_bins: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Reviews as CSR rows (row_splits, word indices) plus labels, per split.

    Reproduces keras.datasets.imdb.load_data(num_words=...) exactly (shuffle with seed 113,
    start character 1, indices offset by 3, rare words -> 2), vectorised over all reviews.
    Each row keeps its distinct word indices in ascending order: what a multi-hot vector needs.
    With `num_bins` > 0, each pair of neighbouring words (a bigram, over the full vocabulary) also
    sets one of `num_bins` hashed columns after the words, like keras.layers.Hashing(num_bins):
    word order that single words cannot see ("not good").
    """
    a = read_npz(path)
    rng = np.random.RandomState(IMDB_SHUFFLE_SEED)
    out = {}
    for split in ("train", "test"):  # the same generator for both, in this order, as Keras does
        order = np.arange(len(a[f"x_{split}"]))
        rng.shuffle(order)
        reviews, labels = a[f"x_{split}"][order], a[f"y_{split}"][order].astype(np.float32)
        lengths = np.fromiter((len(r) for r in reviews), dtype=np.int64, count=len(reviews))
        raw = np.concatenate([np.asarray(r, dtype=np.int64) for r in reviews]) + INDEX_FROM
        words = np.where(raw >= num_words, OOV_CHAR, raw)
        rows = np.repeat(np.arange(len(reviews)), lengths)
        width = num_words + num_bins
        if num_bins:
            rows, words = _with_bigrams(rows, words, raw, num_words, num_bins)
        # one start character per review, then distinct (row, word) pairs in row-major order
        rows = np.concatenate([np.arange(len(reviews)), rows])
        words = np.concatenate([np.full(len(reviews), START_CHAR), words])
        keys = np.sort(rows * width + words)  # sort + mask: np.unique's hashing is 6x slower here
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        rows, words = np.divmod(keys, width)
        row_splits = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(reviews)))])
        out[split] = (row_splits, words.astype(np.int64), labels)
    return out


def _with_bigrams(rows, words, raw, num_words: int, num_bins: int):
    """Append each review's neighbouring-word pairs as columns num_words + hash(pair) % num_bins."""
    same = rows[1:] == rows[:-1]  # both words in the same review
    pairs = (raw[:-1][same] << 20) + raw[1:][same]  # word indices are < 2**20 (IMDB has ~88,600 words)
    hashed = (pairs.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)  # Fibonacci hashing
    bins = num_words + (hashed % np.uint64(num_bins)).astype(np.int64)
    return np.concatenate([rows, rows[1:][same]]), np.concatenate([words, bins])


# ---------------------------------------------------------------------------------------------
# tf.data pipelines


@dataclass
class Data:
    train: object  # tf.data.Dataset of (features, labels) batches
    val: object
    test: object
    sample: tuple  # (features, labels) of the first 10 test samples, for the predictions artifact
    input_shape: tuple
    num_classes: int  # 1: binary with a sigmoid output
    sparse: bool  # features are tf.SparseTensor batches
    loss: str
    sizes: dict


@dataclass
class Tuning:
    """tf.data parallelism (hardware.num_parallel_calls, hardware.prefetch_buffer_size); None = AUTOTUNE."""

    num_parallel_calls: int | None = None
    prefetch_buffer_size: int | None = None


def _batches(n: int, take, batch_size: int, shuffle: bool, seed: int, tuning: Tuning):
    """Index batches of range(n), mapped to tensors by `take(indices)`.

    Shuffling indices (not samples) keeps the buffer tiny and gives a full reshuffle per epoch.
    """
    import tensorflow as tf

    def tuned(value):
        return tf.data.AUTOTUNE if value is None else value

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(take, num_parallel_calls=tuned(tuning.num_parallel_calls), deterministic=True)
    return ds.prefetch(tuned(tuning.prefetch_buffer_size))


def load(cfg, batch_size: int, seed: int, directory: Path, tuning: Tuning | None = None) -> Data:
    """Train/validation/test pipelines for `cfg` (a dataset config); validation = the first samples."""
    import tensorflow as tf

    tuning = tuning or Tuning()
    # tf.data runs on the host: keep its source arrays in host memory, not on a GPU that a
    # plain tf.constant would pick, so batches are not copied back from the device.
    with tf.device("/cpu:0"):
        if cfg.name == "mnist":
            return _mnist(locate("mnist", directory, cfg.download), cfg, batch_size, seed, tuning)
        if cfg.name == "imdb":
            return _imdb(locate("imdb", directory, cfg.download), cfg, batch_size, seed, tuning)
    raise ValueError(f"unknown dataset {cfg.name!r}; choose from {sorted(FILES)}")


def _split_check(name: str, n_train: int, validation_size: int) -> None:
    if validation_size >= n_train:
        raise DataError(
            f"dataset.validation_size={validation_size} leaves no training data: {name} has {n_train} "
            f"training samples. Fix: lower dataset.validation_size."
        )


def _mnist(path: Path, cfg, batch_size: int, seed: int, tuning: Tuning) -> Data:
    import tensorflow as tf

    a = mnist_arrays(path)
    v = cfg.validation_size
    _split_check("mnist", len(a["x_train"]), v)
    splits = {
        "train": (a["x_train"][v:], a["y_train"][v:]),
        "val": (a["x_train"][:v], a["y_train"][:v]),
        "test": (a["x_test"], a["y_test"]),
    }

    def pipeline(x, y, shuffle):
        x, y = tf.constant(x), tf.constant(y.astype(np.int32))

        def take(i):
            return tf.cast(tf.gather(x, i), tf.float32) / 255.0, tf.gather(y, i)

        return _batches(len(y), take, batch_size, shuffle, seed, tuning)

    x_test, y_test = splits["test"]
    return Data(
        train=pipeline(*splits["train"], shuffle=True),
        val=pipeline(*splits["val"], shuffle=False),
        test=pipeline(*splits["test"], shuffle=False),
        sample=(x_test[:10].astype(np.float32) / 255.0, y_test[:10]),
        input_shape=(28, 28),
        num_classes=10,
        sparse=False,
        loss="sparse_categorical_crossentropy",
        sizes={k: len(y) for k, (_, y) in splits.items()},
    )


def _imdb(path: Path, cfg, batch_size: int, seed: int, tuning: Tuning) -> Data:
    import tensorflow as tf

    seqs = imdb_sequences(path, cfg.num_words, cfg.num_bins)
    num_words = cfg.num_words + cfg.num_bins  # the multi-hot width: words, then hashed bigrams
    train_splits, train_words, train_labels = seqs["train"]
    v = cfg.validation_size
    _split_check("imdb", len(train_labels), v)
    cut = train_splits[v]
    splits = {
        "train": (train_splits[v:] - cut, train_words[cut:], train_labels[v:]),
        "val": (train_splits[: v + 1], train_words[:cut], train_labels[:v]),
        "test": seqs["test"],
    }

    def pipeline(row_splits, words, labels, shuffle):
        reviews = tf.RaggedTensor.from_row_splits(tf.constant(words), tf.constant(row_splits), validate=False)
        labels_t = tf.constant(labels)

        def take(i):
            # ragged rows -> SparseTensor [batch, num_words] of ones: the multi-hot batch, never dense
            batch = tf.gather(reviews, i)
            coords = batch.to_sparse()
            indices = tf.stack([coords.indices[:, 0], coords.values], axis=1)
            ones = tf.ones_like(coords.values, dtype=tf.float32)
            shape = tf.stack([tf.shape(i, out_type=tf.int64)[0], tf.constant(num_words, tf.int64)])
            return tf.SparseTensor(indices, ones, shape), tf.gather(labels_t, i)

        return _batches(len(labels), take, batch_size, shuffle, seed, tuning)

    test_splits, test_words, test_labels = seqs["test"]
    sample = np.zeros((10, num_words), dtype=np.float32)
    for row in range(10):
        sample[row, test_words[test_splits[row] : test_splits[row + 1]]] = 1.0
    return Data(
        train=pipeline(*splits["train"], shuffle=True),
        val=pipeline(*splits["val"], shuffle=False),
        test=pipeline(*splits["test"], shuffle=False),
        sample=(sample, test_labels[:10]),
        input_shape=(num_words,),
        num_classes=1,
        sparse=True,
        loss="binary_crossentropy",
        sizes={k: len(s[2]) for k, s in splits.items()},
    )


# ---------------------------------------------------------------------------------------------
# Command line: python -m src.data {download,check}


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["download", "check"])
    parser.add_argument("--dataset", choices=[*sorted(FILES), "all"], default="all")
    parser.add_argument("--data-dir", default=None, help=f"default: ${DATA_DIR_ENV}, else {PROJECT_ROOT / 'data'}")
    args = parser.parse_args(argv)
    directory = data_dir(args.data_dir)
    names = sorted(FILES) if args.dataset == "all" else [args.dataset]
    status = 0
    for name in names:
        path = directory / FILES[name]
        if args.command == "download" and not path.is_file():
            try:
                fetch(name, directory)
            except Exception as err:
                print(f"{name}: download failed ({type(err).__name__}: {err})", file=sys.stderr)
                status = 1
                continue
        if not path.is_file():
            print(f"{name}: missing ({path})")
            status = 1
        elif sha256(path) == SHA256[path.name]:
            print(f"{name}: ok ({path}, sha256 matches Keras's)")
        else:
            print(f"{name}: {path} differs from Keras's file (sha256 mismatch): delete it and download again")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(_cli())
