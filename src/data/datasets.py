"""Datasets by configuration: a YAML in conf/dataset/ names the file, its kind and split; this module reads it.

The data directory holds the files Keras downloads (`mnist.npz`, `imdb.npz`), so offline compute
nodes train from a copy made on the login node:

    python -m src.data download            # fill the data directory (needs internet)
    python -m src.data check               # what is there, against each dataset's sha256

A dataset in Keras's `.npz` layout (x_train, y_train, x_test, y_test) needs only its YAML. A file of
another format needs one function in `LOADERS` returning those four arrays.

Nothing here builds a whole dataset as one float matrix (the lab's 25000x10000 float64 IMDB matrix is
what ran the GPU out of memory): images stay uint8 (the model scales them), and word-index datasets
stay each review's distinct word indices, as a scipy CSR matrix that becomes multi-hot batch by batch.
This module imports neither Keras nor a backend.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse

from .. import config
from ..config import Kind
from ..errors import UserError
from ..paths import PROJECT_ROOT

DATA_DIR_ENV = "LE5_DATA_DIR"
KERAS_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(UserError):
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


def read_npz(path: Path, keys=KERAS_ARRAYS) -> dict[str, np.ndarray]:
    """Read a Keras dataset file, refusing anything but numpy arrays inside it."""
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {name[:-4]: _read_npy(archive.read(name)) for name in archive.namelist() if name.endswith(".npy")}
    except Exception as err:  # zipfile.BadZipFile, EOFError, UnpicklingError, ...
        raise DataError(
            f"{path} is corrupt or truncated ({type(err).__name__}: {err}).\n"
            f"Fix: delete it and fetch it again: python -m src.data download --dataset {path.stem} "
            f"--data-dir {path.parent}"
        ) from err
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(
            f"{path} lacks the arrays {', '.join(missing)} (it has {', '.join(sorted(arrays)) or 'none'}); "
            f"a dataset in Keras's layout has {', '.join(keys)}.\n"
            f"Fix: point dataset.file at the right file, or register a loader for its format in src/data/datasets.py (LOADERS)."
        )
    return arrays


LOADERS = {
    # format -> function(path) returning x_train, y_train, x_test, y_test. Register a new format here.
    "npz": read_npz,
}


# ---------------------------------------------------------------------------------------------
# Finding, fetching and checking the file


def locate(cfg, directory: Path) -> Path:
    """The dataset's file in `directory`, downloading it from `cfg.url` when allowed."""
    path = directory / cfg.file
    if path.is_file():
        return path
    if not cfg.url:
        reason = "the dataset has no download url"
    elif not cfg.download:
        reason = "downloads are off (dataset.download=false)"
    else:
        try:
            return fetch(cfg, directory)
        except Exception as err:  # offline nodes: DNS or connection failures
            reason = f"the download failed ({type(err).__name__}: {err})"
    raise DataError(
        f"{cfg.file} is not in the data directory {directory}, and {reason}.\n"
        f"Fix, either:\n"
        f"  - on a machine with internet (e.g. the login node): python -m src.data download --dataset {cfg.name} "
        f"--data-dir {directory}\n"
        f"  - or point at a folder that has {cfg.file}: export {DATA_DIR_ENV}=/path/to/folder "
        f"(or data_dir=/path/to/folder)"
    )


def fetch(cfg, directory: Path) -> Path:
    """Download the dataset's file into `directory`; a file whose sha256 differs from the known one is not kept."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / cfg.file
    partial = path.with_name(f".{path.name}.part")
    print(f"Downloading {cfg.url} -> {path}", file=sys.stderr)
    try:
        with urllib.request.urlopen(cfg.url, timeout=60) as response, open(partial, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
        if cfg.sha256 and sha256(partial) != cfg.sha256:
            raise DataError(f"the download of {cfg.url} does not match the dataset's sha256")
        os.replace(partial, path)  # never a half-downloaded file under the real name
    finally:
        partial.unlink(missing_ok=True)
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "le5" / "sha256.json"


def digest(path: Path) -> str:
    """sha256 of `path`, cached by (path, size, mtime): hashing IMDB's 17 MB on every run would cost ~0.1 s."""
    import json

    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    cache = _cache_file()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = sha256(path)
        try:  # a read-only home only costs the hash next time
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, cache)
        except OSError:
            pass
    return known[key]


def verify(cfg, path: Path) -> str:
    """The file's sha256, refusing a file that is empty or cut short, or not the dataset's known one (when the YAML
    names one)."""
    found = digest(path)
    if found == cfg.sha256:
        return found
    # with or without a known sha256 (dataset.sha256=null too): an empty or cut file is no dataset
    broken = damage(cfg, path)
    if broken:  # an interrupted copy or download, not another file: say so, not "dataset.sha256=null"
        raise DataError(
            f"{path} is {broken}: an interrupted download or copy.\n"
            f"Fix: delete it and fetch it again: python -m src.data download --dataset {cfg.name} "
            f"--data-dir {path.parent} (or copy it again from a complete copy)."
        )
    if cfg.sha256:
        raise DataError(
            f"{path} is not the {cfg.name} file this dataset expects: its sha256 is {found[:16]}..., "
            f"the known one {cfg.sha256[:16]}....\n"
            f"Fix: fetch the real file (delete it, then python -m src.data download --dataset {cfg.name} "
            f"--data-dir {path.parent}), or, to train on this file on purpose, dataset.sha256=null "
            f"(or another dataset YAML for it)."
        )
    return found


def damage(cfg, path: Path) -> str | None:
    """How the file is visibly damaged (empty, or an npz cut short), else None."""
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes)"
    # a zip's directory is at its end: a file cut short has none
    if cfg.format == "npz" and not zipfile.is_zipfile(path):
        return f"corrupt or truncated ({size} bytes, not a complete .npz archive)"  # read_npz's words
    return None


# ---------------------------------------------------------------------------------------------
# Arrays


@dataclass(frozen=True)
class InputSpec:
    """What a model is built for: the dataset's kind, one sample's shape, classes, and the pixel scale."""

    kind: Kind
    shape: tuple
    num_classes: int
    scale: float | None = None  # images: divide by this inside the model

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def loss(self) -> str:
        return "binary_crossentropy" if self.binary else "sparse_categorical_crossentropy"


@dataclass
class Split:
    x: np.ndarray | scipy.sparse.csr_matrix  # uint8 images, or multi-hot rows as CSR (float32 ones)
    y: np.ndarray  # int32 class indices; float32 0/1 for a binary dataset

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    spec: InputSpec
    path: Path
    sha256: str

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def load(cfg, directory: Path) -> Data:
    """Train/validation/test splits for `cfg` (a dataset config); validation = the first training samples."""
    if cfg.format not in LOADERS:
        raise DataError(f"dataset.format={cfg.format!r} has no loader; choose from {sorted(LOADERS)} (src/data/datasets.py)")
    path = locate(cfg, directory)
    found = verify(cfg, path)
    arrays = LOADERS[cfg.format](path)
    kind = Kind(cfg.kind)
    if kind == Kind.images:
        train, test, spec = _images(cfg, path, arrays)
    else:
        train, test, spec = _sequences(cfg, arrays)
    v = cfg.validation_size
    if v >= len(train):
        raise DataError(
            f"dataset.validation_size={v} leaves no training data: {cfg.name} has {len(train)} "
            f"training samples. Fix: lower dataset.validation_size."
        )
    labels = np.concatenate([train.y, test.y])
    if labels.size and (labels.min() < 0 or labels.max() >= cfg.num_classes):
        raise DataError(f"{path}: labels range {labels.min()}..{labels.max()}, but dataset.num_classes={cfg.num_classes}")
    return Data(
        train=Split(train.x[v:], train.y[v:]),
        val=Split(train.x[:v], train.y[:v]),
        test=test,
        spec=spec,
        path=path,
        sha256=found,
    )


def _labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    return y.astype(np.float32) if num_classes == 2 else y.astype(np.int32)


def _images(cfg, path: Path, a: dict) -> tuple[Split, Split, InputSpec]:
    """uint8 images as Keras's loaders give them, checked against the dataset's shape."""
    shape = tuple(cfg.shape)
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.shape[1:] != shape or len(x) != len(y):
            raise DataError(
                f"{path}: x_{split} has shape {x.shape}, expected (N, {', '.join(map(str, shape))}) with "
                f"N = len(y_{split}) = {len(y)}. Fix: dataset.shape in conf/dataset/{cfg.name}.yaml"
            )
    spec = InputSpec(Kind.images, shape, cfg.num_classes, cfg.scale)
    return (*(Split(a[f"x_{s}"], _labels(a[f"y_{s}"], cfg.num_classes)) for s in ("train", "test")), spec)


def _sequences(cfg, a: dict) -> tuple[Split, Split, InputSpec]:
    seqs = word_index_rows(a, cfg)
    width = cfg.num_words + cfg.num_bins  # the multi-hot width: words, then hashed bigrams
    splits = []
    for split in ("train", "test"):
        row_splits, words, labels = seqs[split]
        ones = np.ones(len(words), dtype=np.float32)
        x = scipy.sparse.csr_matrix((ones, words, row_splits), shape=(len(labels), width))
        splits.append(Split(x, _labels(labels, cfg.num_classes)))
    return splits[0], splits[1], InputSpec(Kind.sequences, (width,), cfg.num_classes)


def word_index_rows(a: dict, cfg) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Reviews as CSR rows (row_splits, word indices) plus labels, per split.

    Reproduces keras.datasets.imdb.load_data(num_words=...) exactly (shuffle with seed 113,
    start character 1, indices offset by 3, rare words -> 2; each a field of `cfg`), vectorised over all reviews.
    Each row keeps its distinct word indices in ascending order: what a multi-hot vector needs.
    With `num_bins` > 0, each pair of neighbouring words (a bigram, over the full vocabulary) also
    sets one of `num_bins` hashed columns after the words, like keras.layers.Hashing(num_bins):
    word order that single words cannot see ("not good").
    """
    num_words, num_bins = cfg.num_words, cfg.num_bins
    rng = np.random.RandomState(cfg.shuffle_seed) if cfg.shuffle_seed is not None else None
    out = {}
    for split in ("train", "test"):  # the same generator for both, in this order, as Keras does
        order = np.arange(len(a[f"x_{split}"]))
        if rng is not None:
            rng.shuffle(order)
        reviews, labels = a[f"x_{split}"][order], a[f"y_{split}"][order]
        lengths = np.fromiter((len(r) for r in reviews), dtype=np.int64, count=len(reviews))
        raw = np.concatenate([np.asarray(r, dtype=np.int64) for r in reviews] or [np.zeros(0, np.int64)]) + cfg.index_from
        words = np.where(raw >= num_words, cfg.oov_char, raw)
        rows = np.repeat(np.arange(len(reviews)), lengths)
        width = num_words + num_bins
        if num_bins:
            rows, words = _with_bigrams(rows, words, raw, num_words, num_bins)
        # one start character per review, then distinct (row, word) pairs in row-major order
        rows = np.concatenate([np.arange(len(reviews)), rows])
        words = np.concatenate([np.full(len(reviews), cfg.start_char), words])
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
# Command line: python -m src.data {download,check}


def datasets() -> dict[str, object]:
    """Every dataset option in conf/dataset, as its schema-checked config."""
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(config.DatasetConfig)
    return {name: OmegaConf.merge(schema, yaml) for name, yaml in config.options("dataset").items()}


def _cli(argv: list[str] | None = None) -> int:
    found = datasets()
    parser = argparse.ArgumentParser(prog="python -m src.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["download", "check"])
    parser.add_argument("--dataset", choices=[*sorted(found), "all"], default="all")
    parser.add_argument("--data-dir", default=None, help=f"default: ${DATA_DIR_ENV}, else {PROJECT_ROOT / 'data'}")
    args = parser.parse_args(argv)
    directory = data_dir(args.data_dir)
    names = sorted(found) if args.dataset == "all" else [args.dataset]
    status = 0
    for name in names:
        cfg = found[name]
        path = directory / cfg.file
        if args.command == "download" and not path.is_file():
            try:
                fetch(cfg, directory)
            except Exception as err:
                print(f"{name}: download failed ({type(err).__name__}: {err})", file=sys.stderr)
                status = 1
                continue
        if not path.is_file():
            print(f"{name}: missing ({path})")
            status = 1
        elif cfg.sha256 and sha256(path) == cfg.sha256:
            print(f"{name}: ok ({path}, sha256 matches)")
        elif broken := damage(cfg, path):
            print(f"{name}: {path} is {broken}: delete it and download or copy it again")
            status = 1
        elif not cfg.sha256:
            print(f"{name}: present ({path}; no known sha256 to check against)")
        else:
            print(f"{name}: {path} differs from the known file (sha256 mismatch): delete it and download again")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(_cli())
