"""One measured process: `python -m benchmarks.child MODE [ARGS]`, started by the benchmark scripts.

Writes its figures (epoch times, first-step time, accuracies) as JSON to $BENCH_REPORT; the
parent adds wall time and peak resident memory. Modes:

  import_tf            bare `import tensorflow`, nothing else
  project OVERRIDES    the project's CLI (`python -m src.train OVERRIDES`) in this process, with
                       a timing callback added; --no-mlflow-callback drops MLflowMetrics
  lab_mnist EPOCHS     the lab's MNIST code: numpy float32 arrays, Sequential, model.fit
  lab_imdb EPOCHS      the lab's IMDB code: float64 multi-hot built with a Python loop, then fit
  dense_imdb EPOCHS    IMDB as one dense float32 multi-hot matrix per split, then fit
  uint8_imdb EPOCHS    IMDB as dense uint8 multi-hot matrices, cast to float32 per batch in tf.data
  ragged_dense_imdb EPOCHS   IMDB as ragged word lists, densified to float32 multi-hot per batch in tf.data
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPORT: dict = {}


def _save():
    Path(os.environ["BENCH_REPORT"]).write_text(json.dumps(REPORT, default=float))


def _timer():
    import keras

    class Timer(keras.callbacks.Callback):
        """Epoch wall times (train + validation, as Keras's epoch) and the moment of the first step."""

        def __init__(self):
            super().__init__()
            REPORT.update(epoch_times=[], history=[])
            self._start = None

        def on_train_batch_begin(self, batch, logs=None):
            if "first_step_at" not in REPORT:
                REPORT["first_step_at"] = time.time()

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            REPORT["epoch_times"].append(time.perf_counter() - self._start)
            REPORT["history"].append({k: float(v) for k, v in (logs or {}).items()})

    return Timer()


def _timed(owner, name: str, key: str):
    """Wrap owner.name so the seconds spent in it add up in REPORT[key]."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            REPORT.setdefault(key, []).append(time.perf_counter() - t)

    setattr(owner, name, wrapper)


def project(argv: list[str]) -> None:
    drop_mlflow = "--no-mlflow-callback" in argv
    overrides = [a for a in argv if a != "--no-mlflow-callback"]
    # Imported (not run as __main__), Hydra would look for conf/ as a package: name its folder.
    sys.argv = ["src/train.py", f"--config-path={Path(__file__).resolve().parents[1] / 'conf'}", *overrides]
    import mlflow

    from src import tracking, train

    original = train._callbacks

    def callbacks(*args):
        chosen = [c for c in original(*args) if not (drop_mlflow and isinstance(c, tracking.MLflowMetrics))]
        return [_timer(), *chosen]  # first, so the epoch time covers the other callbacks' work

    train._callbacks = callbacks
    # The MLflow callback's own cost per epoch, measured directly (not as a noisy difference).
    _timed(tracking.MLflowMetrics, "on_epoch_end", "mlflow_callback_s")
    _timed(tracking.MLflowMetrics, "on_train_end", "mlflow_callback_end_s")
    # Tracking's fixed cost per run: store check, params, artifacts (model file, plot, config).
    _timed(train.tracking, "connect", "tracking_connect_s")
    _timed(mlflow, "log_params", "tracking_params_s")
    _timed(train, "_log_artifacts", "tracking_artifacts_s")
    train.main()
    run = mlflow.search_runs(experiment_names=["bench"], max_results=1, order_by=["start_time DESC"],
                             output_format="list")[0]
    REPORT["test"] = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    REPORT["run_status"] = run.info.status
    REPORT["logged_epochs"] = len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss"))


def _fit_report(model, x, y, validation, test, epochs, batch_size):
    timer = _timer()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=validation, callbacks=[timer], verbose=2)
    REPORT["test"] = {"test_" + k: float(v) for k, v in model.evaluate(*test, return_dict=True, verbose=0).items()}


def _keras_home(data_dir: Path) -> None:
    """Keras's own loaders, offline: a KERAS_HOME whose datasets/ links to the data directory's files."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="keras-home-"))
    (home / "datasets").mkdir()
    for name in ("mnist.npz", "imdb.npz"):
        (home / "datasets" / name).symlink_to(data_dir / name)
    os.environ["KERAS_HOME"] = str(home)


def lab_mnist(epochs: int, data_dir: Path) -> None:
    """The lab's code (Chollet, ch. 2), holding out the project's 5,000 validation images so both do equal work."""
    _keras_home(data_dir)
    import keras
    from keras import layers, models

    keras.utils.set_random_seed(42)
    (train_images, train_labels), (test_images, test_labels) = keras.datasets.mnist.load_data()
    train_images = train_images.reshape((60000, 28 * 28)).astype("float32") / 255
    test_images = test_images.reshape((10000, 28 * 28)).astype("float32") / 255
    train_labels = keras.utils.to_categorical(train_labels)
    test_labels = keras.utils.to_categorical(test_labels)
    network = models.Sequential([keras.Input((28 * 28,)), layers.Dense(512, activation="relu"),
                                 layers.Dense(10, activation="softmax")])
    network.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    v = 5000
    _fit_report(network, train_images[v:], train_labels[v:], (train_images[:v], train_labels[:v]),
                (test_images, test_labels), epochs, 128)


def _imdb_model(inputs):
    import keras
    from keras import layers

    x = layers.Dense(16, activation="relu")(inputs)
    x = layers.Dense(16, activation="relu")(x)
    model = keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer="rmsprop", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def lab_imdb(epochs: int, data_dir: Path) -> None:
    """The lab's code (Chollet, ch. 3): float64 multi-hot with a Python loop, train and test."""
    _keras_home(data_dir)
    import keras
    import numpy as np

    keras.utils.set_random_seed(42)
    (train_data, train_labels), (test_data, test_labels) = keras.datasets.imdb.load_data(num_words=10000)

    def vectorize_sequences(sequences, dimension=10000):
        results = np.zeros((len(sequences), dimension))
        for i, sequence in enumerate(sequences):
            results[i, sequence] = 1.
        return results

    x_train = vectorize_sequences(train_data)
    x_test = vectorize_sequences(test_data)
    y_train = np.asarray(train_labels).astype("float32")
    y_test = np.asarray(test_labels).astype("float32")
    x_val, partial_x_train = x_train[:10000], x_train[10000:]
    y_val, partial_y_train = y_train[:10000], y_train[10000:]
    model = _imdb_model(keras.Input((10000,)))
    _fit_report(model, partial_x_train, partial_y_train, (x_val, y_val), (x_test, y_test), epochs, 512)


def _csr_splits(data_dir: Path):
    from src import data

    seqs = data.imdb_sequences(data_dir / "imdb.npz", 10000)
    (splits, words, labels), test = seqs["train"], seqs["test"]
    cut = splits[10000]
    return {"train": (splits[10000:] - cut, words[cut:], labels[10000:]),
            "val": (splits[:10001], words[:cut], labels[:10000]), "test": test}


def _dense(split, dtype):
    import numpy as np

    row_splits, words, labels = split
    x = np.zeros((len(labels), 10000), dtype=dtype)
    x[np.repeat(np.arange(len(labels)), np.diff(row_splits)), words] = 1
    return x, labels


def dense_imdb(epochs: int, data_dir: Path) -> None:
    import keras

    keras.utils.set_random_seed(42)
    s = {k: _dense(v, "float32") for k, v in _csr_splits(data_dir).items()}
    model = _imdb_model(keras.Input((10000,)))
    _fit_report(model, *s["train"], s["val"], s["test"], epochs, 512)


def _tf_pipelines(data_dir: Path, make_take):
    """Index-batch pipelines as src/data.py builds them, with `make_take(split)` mapping indices to a batch."""
    from src import data

    out = {}
    for name, split in _csr_splits(data_dir).items():
        out[name] = data._batches(len(split[2]), make_take(split), 512, name == "train", 42, data.Tuning())
    return out


def uint8_imdb(epochs: int, data_dir: Path) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(42)

    def make_take(split):
        x, y = _dense(split, "uint8")
        x, y = tf.constant(x), tf.constant(y)
        return lambda i: (tf.cast(tf.gather(x, i), tf.float32), tf.gather(y, i))

    p = _tf_pipelines(data_dir, make_take)
    model = _imdb_model(keras.Input((10000,)))
    _fit_report(model, p["train"], None, p["val"], (p["test"],), epochs, None)


def ragged_dense_imdb(epochs: int, data_dir: Path) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(42)

    def make_take(split):
        row_splits, words, labels = split
        reviews = tf.RaggedTensor.from_row_splits(tf.constant(words), tf.constant(row_splits), validate=False)
        y = tf.constant(labels)

        def take(i):
            coords = tf.gather(reviews, i).to_sparse()  # ragged -> dense multi-hot by scattering ones
            n = tf.shape(i, out_type=tf.int64)[0]
            hot = tf.scatter_nd(tf.stack([coords.indices[:, 0], coords.values], axis=1),
                                tf.ones_like(coords.values, dtype=tf.float32), tf.stack([n, 10000]))
            return hot, tf.gather(y, i)

        return take

    p = _tf_pipelines(data_dir, make_take)
    model = _imdb_model(keras.Input((10000,)))
    _fit_report(model, p["train"], None, p["val"], (p["test"],), epochs, None)


def main() -> None:
    mode, rest = sys.argv[1], sys.argv[2:]
    try:
        if mode == "import_tf":
            import tensorflow  # noqa: F401

            REPORT["imported_at"] = time.time()
        elif mode == "project":
            project(rest)
        else:
            runners = {"lab_mnist": lab_mnist, "lab_imdb": lab_imdb, "dense_imdb": dense_imdb,
                       "uint8_imdb": uint8_imdb, "ragged_dense_imdb": ragged_dense_imdb}
            runners[mode](int(rest[0]), Path(rest[1]))
    finally:
        _save()


if __name__ == "__main__":
    main()
