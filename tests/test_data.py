"""The loading code on synthetic Keras-format files: splits, IMDB's Keras conventions, errors."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import IMDB_SIZES, MNIST_SIZES, compose
from src import data


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
    got = data.imdb_sequences(data_dir / "imdb.npz", num_words=1000)
    for split in ("train", "test"):
        row_splits, words, labels = got[split]
        reviews, ref_labels = expected[split]
        assert len(row_splits) == len(reviews) + 1
        for i, review in enumerate(reviews):
            assert list(words[row_splits[i] : row_splits[i + 1]]) == sorted(set(review))
        np.testing.assert_array_equal(labels, ref_labels)


def _dense(batch):
    import tensorflow as tf

    x, y = batch
    return (tf.sparse.to_dense(x) if isinstance(x, tf.SparseTensor) else x).numpy(), y.numpy()


def test_imdb_pipeline_yields_multi_hot_batches_with_the_first_reviews_as_validation(data_dir):
    cfg = compose(["model=imdb_dense", "dataset.validation_size=100"]).dataset
    d = data.load(cfg, batch_size=32, seed=0, directory=data_dir)
    assert d.sparse and d.input_shape == (10000,) and d.num_classes == 1
    assert d.sizes == {"train": IMDB_SIZES["train"] - 100, "val": 100, "test": IMDB_SIZES["test"]}

    row_splits, words, labels = data.imdb_sequences(data_dir / "imdb.npz", 10000)["train"]
    val = np.concatenate([_dense(b)[0] for b in d.val])
    assert val.shape == (100, 10000) and val.dtype == np.float32 and set(np.unique(val)) == {0.0, 1.0}
    for i in (0, 57, 99):  # validation row i is training review i, multi-hot
        assert set(np.flatnonzero(val[i])) == set(words[row_splits[i] : row_splits[i + 1]])
    train_labels = np.concatenate([_dense(b)[1] for b in d.train])
    assert sorted(train_labels) == sorted(labels[100:])


def test_mnist_pipeline_scales_pixels_and_reshuffles_each_epoch(data_dir):
    cfg = compose(["dataset.validation_size=100"]).dataset
    d = data.load(cfg, batch_size=50, seed=0, directory=data_dir)
    assert d.sizes == {"train": MNIST_SIZES["train"] - 100, "val": 100, "test": MNIST_SIZES["test"]}
    x, y = _dense(next(iter(d.val)))
    raw = data.read_npz(data_dir / "mnist.npz")
    np.testing.assert_allclose(x, raw["x_train"][:50] / 255.0, rtol=1e-6)
    first = [b[1].numpy().tolist() for b in d.train]
    second = [b[1].numpy().tolist() for b in d.train]
    assert first != second and sorted(sum(first, [])) == sorted(sum(second, []))


def test_missing_file_names_the_directory_and_both_fixes(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.locate("mnist", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path) in message and "python -m src.data download" in message and "LE5_DATA_DIR" in message


def test_truncated_file_is_named_with_the_redownload_command(data_dir, tmp_path):
    broken = tmp_path / "mnist.npz"
    broken.write_bytes((data_dir / "mnist.npz").read_bytes()[:5000])
    with pytest.raises(data.DataError, match="corrupt or truncated") as err:
        data.mnist_arrays(broken)
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
    assert "differs from Keras's file" in out  # synthetic files are not Keras's
