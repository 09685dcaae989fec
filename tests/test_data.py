"""The loading code on synthetic Keras-format files: splits, IMDB's Keras conventions, errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import IMDB_SIZES, MNIST_SIZES, compose
from src.data import datasets as data


def _keras_imdb_reference(x, num_words):
    """keras.datasets.imdb.load_data's per-review loops, written plainly: the behaviour to match."""
    rng = np.random.RandomState(113)
    out = {}
    for split in ("train", "test"):
        order = np.arange(len(x[f"x_{split}"]))
        rng.shuffle(order)
        reviews = [[1] + [w + 3 for w in x[f"x_{split}"][i]] for i in order]
        reviews = [[w if w < num_words else 2 for w in r] for r in reviews]
        out[split] = (reviews, x[f"y_{split}"][order])
    return out


def test_imdb_rows_match_keras_conventions(data_dir):
    raw = data.read_npz(data_dir / "imdb.npz")
    expected = _keras_imdb_reference(raw, num_words=1000)
    cfg = compose(["model=imdb_dense", "dataset.num_words=1000"]).dataset
    got = data.word_index_rows(raw, cfg)
    for split in ("train", "test"):
        row_splits, words, labels = got[split]
        reviews, ref_labels = expected[split]
        assert len(row_splits) == len(reviews) + 1
        for i, review in enumerate(reviews):
            assert list(words[row_splits[i] : row_splits[i + 1]]) == sorted(set(review))
        np.testing.assert_array_equal(labels, ref_labels)


def test_imdb_splits_are_multi_hot_rows_with_the_first_reviews_as_validation(data_dir):
    cfg = compose(["model=imdb_dense", "dataset.validation_size=100", "dataset.sha256=null"]).dataset
    d = data.load(cfg, data_dir)
    assert d.spec.shape == (10000,) and d.spec.binary and d.spec.loss == "binary_crossentropy"
    assert d.sizes == {"train": IMDB_SIZES["train"] - 100, "val": 100, "test": IMDB_SIZES["test"]}

    row_splits, words, labels = data.word_index_rows(data.read_npz(data_dir / "imdb.npz"), cfg)["train"]
    val = d.val.x[:100].toarray()
    assert val.shape == (100, 10000) and val.dtype == np.float32 and set(np.unique(val)) == {0.0, 1.0}
    for i in (0, 57, 99):  # validation row i is training review i, multi-hot
        assert set(np.flatnonzero(val[i])) == set(words[row_splits[i] : row_splits[i + 1]])
    assert sorted(d.train.y) == sorted(labels[100:])


def test_multi_hot_batches_cover_every_review_once_and_reshuffle_each_epoch(data_dir):
    from src.training import batches

    cfg = compose(["model=imdb_dense", "dataset.validation_size=100", "dataset.sha256=null"]).dataset
    d = data.load(cfg, data_dir)
    feed = batches.MultiHotBatches(d.train, batch_size=64, shuffle=True, seed=0)
    epochs = []
    for _ in range(2):
        rows = [feed[i] for i in range(len(feed))]
        epochs.append(np.concatenate([x for x, _ in rows]))
        feed.on_epoch_end()
    assert all(len(e) == len(d.train) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])  # another order
    key = lambda m: sorted(map(bytes, np.packbits(m.astype(bool), axis=1)))  # noqa: E731
    assert key(epochs[0]) == key(epochs[1]) == key(d.train.x.toarray())  # the same reviews, each once


def test_mnist_stays_uint8_and_the_model_scales_it(data_dir):
    cfg = compose(["dataset.validation_size=100", "dataset.sha256=null"]).dataset
    d = data.load(cfg, data_dir)
    assert d.sizes == {"train": MNIST_SIZES["train"] - 100, "val": 100, "test": MNIST_SIZES["test"]}
    raw = data.read_npz(data_dir / "mnist.npz")
    assert d.train.x.dtype == np.uint8
    np.testing.assert_array_equal(d.val.x, raw["x_train"][:100])
    assert d.spec.shape == (28, 28) and d.spec.scale == 255.0 and d.spec.num_classes == 10


def test_missing_file_names_the_directory_and_both_fixes(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.locate(compose(["dataset.download=false"]).dataset, tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "python -m src.data download" in message and "LE5_DATA_DIR" in message


def test_truncated_file_is_named_with_the_redownload_command(data_dir, tmp_path):
    broken = tmp_path / "mnist.npz"
    broken.write_bytes((data_dir / "mnist.npz").read_bytes()[:5000])
    with pytest.raises(data.DataError, match="corrupt or truncated") as err:
        data.read_npz(broken)
    assert str(broken) in str(err.value) and "python -m src.data download --dataset mnist" in str(err.value)


def test_pickle_gadget_in_npz_is_refused_not_executed(tmp_path):
    class Gadget:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    reviews = np.empty(2, dtype=object)
    reviews[0], reviews[1] = Gadget(), [1, 2]
    np.savez(tmp_path / "imdb.npz", x_train=reviews, y_train=np.zeros(2), x_test=reviews, y_test=np.zeros(2))
    with pytest.raises(data.DataError, match="refusing to unpickle"):
        data.read_npz(tmp_path / "imdb.npz")
    assert not (tmp_path / "pwned").exists()


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LE5_DATA_DIR", str(tmp_path / "env"))
    assert data.data_dir(None) == tmp_path / "env"
    assert data.data_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"
    monkeypatch.delenv("LE5_DATA_DIR")
    assert data.data_dir(None) == data.PROJECT_ROOT / "data"


def test_check_command_reports_missing_and_mismatching_files(data_dir, capsys):
    assert data._cli(["check", "--data-dir", str(data_dir)]) == 1
    out = capsys.readouterr().out
    assert "differs from the known file" in out  # synthetic files are not Keras's


def test_npz_missing_arrays_names_them_and_the_file(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(2))
    with pytest.raises(data.DataError) as err:
        data.read_npz(tmp_path / "mnist.npz")
    message = str(err.value)
    assert "lacks the arrays x_test, y_test" in message and str(tmp_path / "mnist.npz") in message
    assert "corrupt" not in message


def test_a_different_file_under_a_known_name_is_refused(data_dir):
    cfg = compose(["dataset.validation_size=100"]).dataset  # the real MNIST sha256
    with pytest.raises(data.DataError, match="is not the mnist file this dataset expects") as err:
        data.load(cfg, data_dir)
    assert "dataset.sha256=null" in str(err.value)


def test_digest_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "f.npz"
    path.write_bytes(b"one")
    first = data.digest(path)
    assert first == data.sha256(path)
    calls = []
    monkeypatch.setattr(data, "sha256", lambda p: calls.append(p) or "recomputed")
    assert data.digest(path) == first and not calls  # cached
    path.write_bytes(b"other content")
    assert data.digest(path) == "recomputed" and calls == [path]  # size/mtime changed


@pytest.mark.parametrize("cut, named", [(0, "is empty (0 bytes)"), (5000, "is corrupt or truncated")])
def test_an_empty_or_cut_file_under_a_known_name_is_named_so_not_as_another_file(data_dir, tmp_path, capsys, cut, named):
    """A 0-byte or half-copied mnist.npz is an interrupted copy: the fix is to copy it again, not dataset.sha256=null."""
    (tmp_path / "mnist.npz").write_bytes((data_dir / "mnist.npz").read_bytes()[:cut])
    cfg = compose(["dataset.validation_size=100"]).dataset  # the real MNIST sha256
    with pytest.raises(data.DataError, match=re.escape(named)) as err:
        data.load(cfg, tmp_path)
    assert "python -m src.data download --dataset mnist" in str(err.value)
    assert "sha256=null" not in str(err.value)
    assert data._cli(["check", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 1
    assert named in capsys.readouterr().out


def test_an_empty_file_is_named_so_without_a_known_sha256_too(tmp_path):
    """With dataset.sha256=null an empty mnist.npz was "corrupt or truncated (BadZipFile: File is not a zip file)"."""
    (tmp_path / "mnist.npz").write_bytes(b"")
    cfg = compose(["dataset.validation_size=100", "dataset.sha256=null"]).dataset
    with pytest.raises(data.DataError, match=re.escape(f"{tmp_path / 'mnist.npz'} is empty (0 bytes)")) as err:
        data.load(cfg, tmp_path)
    assert "python -m src.data download --dataset mnist" in str(err.value)


def test_the_real_data_tier_reads_the_offline_data_folder_when_no_other_is_named(tmp_path):
    """README's offline setup exports LE5_DATA_DIR only: the real-data tests must use it, not skip."""
    from conftest import ROOT, real_data_dir

    # the suite as README's setup runs it: its own conftest, imported with only LE5_DATA_DIR set
    env = {k: v for k, v in os.environ.items() if k not in ("LE5_REAL_DATA_DIR", "LE5_DATA_DIR")}
    printed = subprocess.run(
        [sys.executable, "-c", "import conftest; print(conftest.REAL_DATA)"], cwd=ROOT / "tests",
        env={**env, "LE5_DATA_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert printed.strip() == str(tmp_path)
    assert real_data_dir({"LE5_DATA_DIR": str(tmp_path)}) == tmp_path
    assert real_data_dir({"LE5_DATA_DIR": "/a", "LE5_REAL_DATA_DIR": str(tmp_path)}) == tmp_path
    assert real_data_dir({}).parts[-2:] == ("shared", "data")


@pytest.mark.processes  # src.doctor probes the other backends in processes
def test_doctor_names_an_empty_or_cut_data_file_and_blocks_on_it(data_dir, tmp_path, capsys):
    """doctor said "not the known file (sha256 differs). Fix: download it again" for both."""
    from src import doctor

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "mnist.npz").write_bytes((data_dir / "mnist.npz").read_bytes()[:5000])
    (folder / "imdb.npz").write_bytes(b"")
    code = doctor.run([f"data_dir={folder}", f"tracking.tracking_uri=sqlite:///{tmp_path}/store/mlflow.db"])
    lines = capsys.readouterr().out.splitlines()
    fix = f"Fix: delete it, then python -m src.data download --dataset {{}} --data-dir {folder}"
    assert f"✗ data mnist: {folder / 'mnist.npz'} is corrupt or truncated (5000 bytes" in "\n".join(lines)
    assert f"✗ data imdb: {folder / 'imdb.npz'} is empty (0 bytes). {fix.format('imdb')}" in lines
    assert not [line for line in lines if "sha256 differs" in line]
    assert code == 1 and lines[-1].startswith("cannot run")  # the chosen dataset (mnist) cannot be read
