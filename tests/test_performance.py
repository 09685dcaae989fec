"""The performance work's logic: the lean IMDB representation gives the lab's multi-hot vectors,
mixed precision trains the IMDB net, the GPU tuning options keep one metric point per epoch, and
queued MLflow metrics are all in the store when fit returns. No timing here: speed and memory are
measured by benchmarks/ (README, "Performance").
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import REAL_DATA, compose
from src import config
from src.data import datasets as data


def lab_vectorize_sequences(sequences, dimension=10000):
    """The lab's code, verbatim: float64 multi-hot rows built with a Python loop."""
    results = np.zeros((len(sequences), dimension))
    for i, sequence in enumerate(sequences):
        results[i, sequence] = 1.
    return results


def keras_imdb_reviews(raw, num_words):
    """keras.datasets.imdb.load_data(num_words=...)'s review lists, by its own per-review loops."""
    rng = np.random.RandomState(113)
    out = {}
    for split in ("train", "test"):
        order = np.arange(len(raw[f"x_{split}"]))
        rng.shuffle(order)
        reviews = [[1] + [w + 3 for w in raw[f"x_{split}"][i]] for i in order]
        out[split] = ([[w if w < num_words else 2 for w in r] for r in reviews], raw[f"y_{split}"][order])
    return out


def project_matrix(split, batch_size=64, shuffle=False, stop=None) -> tuple[np.ndarray, np.ndarray]:
    """What the model is fed, batch by batch (MultiHotBatches), stacked."""
    from src.training import batches

    feed = batches.MultiHotBatches(split, batch_size, shuffle=shuffle, seed=0)
    xs, ys = zip(*(feed[i] for i in range(stop or len(feed))))
    return np.concatenate(xs), np.concatenate(ys)


def test_multi_hot_batches_equal_the_labs_float64_multi_hot(data_dir):
    cfg = compose(["model=imdb_dense", "dataset.validation_size=100", "dataset.sha256=null"]).dataset
    d = data.load(cfg, data_dir)
    reviews = keras_imdb_reviews(data.read_npz(data_dir / "imdb.npz"), 10000)
    x_train, y_train = lab_vectorize_sequences(reviews["train"][0]), reviews["train"][1].astype("float32")
    x_test, y_test = lab_vectorize_sequences(reviews["test"][0]), reviews["test"][1].astype("float32")

    for pipeline, (x, y) in [(d.val, (x_train[:100], y_train[:100])), (d.test, (x_test, y_test))]:
        got_x, got_y = project_matrix(pipeline)  # unshuffled: row for row
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
    # training batches are reshuffled: the same rows as a multiset (with their labels)
    got_x, got_y = project_matrix(d.train, shuffle=True)
    expected = np.hstack([x_train[100:], y_train[100:, None]])
    got = np.hstack([got_x, got_y[:, None]])
    np.testing.assert_array_equal(got[np.lexsort(got.T)], expected[np.lexsort(expected.T)])


@pytest.mark.realdata
@pytest.mark.skipif(not (REAL_DATA / "imdb.npz").is_file(), reason=f"real imdb.npz not in {REAL_DATA}")
def test_real_imdb_matches_keras_load_data_with_the_labs_vectorizer(tmp_path):
    """Against Keras's own loader, run offline in a child process whose KERAS_HOME links to the real file."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "imdb.npz").symlink_to(REAL_DATA / "imdb.npz")
    n = 1024  # the first rows of validation and test: 2 x 80 MB as float64, not 2 GB
    script = (
        "import json, keras\n"
        "(xt, yt), (xs, ys) = keras.datasets.imdb.load_data(num_words=10000)\n"
        f"print(json.dumps([[list(map(int, r)) for r in xt[:{n}]], yt[:{n}].tolist(), "
        f"[list(map(int, r)) for r in xs[:{n}]], ys[:{n}].tolist()]))\n"
    )
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    train_data, train_labels, test_data, test_labels = json.loads(out.stdout.splitlines()[-1])

    d = data.load(compose(["model=imdb_dense"]).dataset, REAL_DATA)
    for split, reviews, labels in [(d.val, train_data, train_labels), (d.test, test_data, test_labels)]:
        got_x, got_y = project_matrix(split, batch_size=512, stop=n // 512)
        np.testing.assert_array_equal(got_x, lab_vectorize_sequences(reviews))
        np.testing.assert_array_equal(got_y, np.asarray(labels).astype("float32"))


def test_mixed_precision_trains_the_imdb_net_on_cpu(train_run):
    import keras

    try:
        objective, run = train_run("model=imdb_dense", "hardware.mixed_precision=true", "trainer.epochs=2")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert run.info.status == "FINISHED" and "mixed_float16" in run.data.tags["device"]
    assert np.isfinite(objective) and np.isfinite(run.data.metrics["test_loss"])


def test_gpu_tuning_options_keep_one_metric_point_per_epoch(train_run):
    from mlflow.tracking import MlflowClient

    _, run = train_run("trainer.epochs=3", "hardware.steps_per_execution=4", "hardware.jit_compile=false")
    history = MlflowClient().get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert run.data.params["hardware.steps_per_execution"] == "4"


@pytest.mark.parametrize("override", ["hardware.steps_per_execution=0", "hardware.device_data_budget=0",
                                      "hardware.device_data_budget=1.5"])
def test_tuning_values_out_of_range_are_refused_by_name(override):
    with pytest.raises(config.ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        config.validate(compose([override]))


def test_queued_epoch_metrics_are_in_the_store_when_fit_returns(store, experiment):
    """MLflowMetrics logs asynchronously; fit must not return before the store has every epoch."""
    import keras
    import mlflow
    from mlflow.tracking import MlflowClient

    from src.training import callbacks

    mlflow.set_tracking_uri(store)
    experiment_id = mlflow.create_experiment(experiment)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).random((32, 4)).astype("float32")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        model.fit(x, x[:, :1], epochs=5, verbose=0, callbacks=[callbacks.MLflowMetrics(run.info.run_id)])
        history = MlflowClient().get_metric_history(run.info.run_id, "loss")  # before the run ends
        assert [m.step for m in history] == [1, 2, 3, 4, 5]


def test_synthetic_benchmark_files_load_like_the_real_ones(tmp_path):
    from benchmarks import synthetic

    synthetic.write_mnist(tmp_path / "mnist.npz", scale=0.01)
    synthetic.write_imdb(tmp_path / "imdb.npz", scale=0.01)
    mnist = data.read_npz(tmp_path / "mnist.npz")
    assert mnist["x_train"].shape == (600, 28, 28) and mnist["x_test"].dtype == np.uint8
    imdb = data.word_index_rows(data.read_npz(tmp_path / "imdb.npz"), compose(["model=imdb_dense"]).dataset)
    row_splits, words, labels = imdb["train"]
    assert len(labels) == 250 and words.max() < 10000 and (np.diff(row_splits) > 5).all()
