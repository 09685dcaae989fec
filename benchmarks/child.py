"""One measured process: `python -m benchmarks.child MODE [ARGS]`, started by the benchmark scripts.

Writes its figures (epoch times, first-step time, accuracies) as JSON to $BENCH_REPORT; the
parent adds wall time and peak resident memory. The plain-Keras modes run on $KERAS_BACKEND
(the parent sets it; default tensorflow), the project on its `backend=` override. Modes:

  import_tf            bare `import tensorflow`, nothing else
  project OVERRIDES    the project's CLI (`python -m src.train OVERRIDES`) in this process, with
                       a timing callback added; --no-mlflow-callback drops MLflowMetrics,
                       --no-backup-callback keeps resume.Backup's epoch logs but skips its weights file
  lab_mnist EPOCHS DIR     the lab's MNIST code: numpy float32 arrays, Sequential, model.fit
  lab_imdb EPOCHS DIR      the lab's IMDB code: float64 multi-hot built with a Python loop, then fit
  dense_imdb EPOCHS DIR    IMDB as one dense float32 multi-hot matrix per split (vectorised), then fit
  batches_imdb EPOCHS DIR  the lab's IMDB model and fit, fed as src/training/batches.py feeds the project (sparse
                           batches on TensorFlow, MultiHotBatches elsewhere): the input path alone
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
    drop = {"--no-mlflow-callback", "--no-backup-callback"} & set(argv)
    overrides = [a for a in argv if a not in drop]
    # Imported (not run as __main__), Hydra would look for conf/ as a package: name its folder.
    sys.argv = ["src/train.py", f"--config-path={Path(__file__).resolve().parents[1] / 'conf'}", *overrides]
    import mlflow

    from src.tracking import store
    from src import train  # neither imports Keras: train() picks the backend first

    original = train._callbacks

    def callbacks(*args):
        # Keras is imported by now (train() chose the backend), so the callback classes can be too.
        from src.training import callbacks as cb
        from src.training import resume

        dropped = (cb.MLflowMetrics,) if "--no-mlflow-callback" in drop else ()
        if "--no-backup-callback" in drop:
            # train() reads the history back from the backup: keep the epochs' logs, skip the weights file
            def light(self, epoch, logs=None):
                self.state = {**self.state, "epochs": [*self.epochs, cb.numeric_logs(logs)]}

            resume.Backup.on_epoch_end = light
        if not getattr(cb.MLflowMetrics, "_bench_timed", False):
            # Each callback's own cost per epoch, measured directly (not as a noisy difference).
            _timed(cb.MLflowMetrics, "on_epoch_end", "mlflow_callback_s")
            _timed(cb.MLflowMetrics, "on_train_end", "mlflow_callback_end_s")
            _timed(resume.Backup, "on_epoch_end", "backup_callback_s")
            cb.MLflowMetrics._bench_timed = True
        chosen = [c for c in original(*args) if not isinstance(c, dropped)]
        return [_timer(), *chosen]  # first, so the epoch time covers the other callbacks' work

    train._callbacks = callbacks
    # Tracking's fixed cost per run: store check, params, artifacts (plot, config, model file).
    _timed(store, "connect", "tracking_connect_s")
    _timed(mlflow, "log_params", "tracking_params_s")
    _timed(train, "_log_artifacts", "tracking_artifacts_s")
    train.main()
    import keras

    REPORT["backend"] = keras.backend.backend()
    run = mlflow.search_runs(experiment_names=["bench"], max_results=1, order_by=["start_time DESC"],
                             output_format="list")[0]
    REPORT["test"] = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    REPORT["run_status"] = run.info.status
    REPORT["logged_epochs"] = len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss"))


def _fit_report(model, x, y, validation, test, epochs, batch_size):
    import keras

    REPORT["backend"] = keras.backend.backend()
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


def lab_mnist(epochs: int, data_dir: Path, validation: int = 5000) -> None:
    """The lab's code (Chollet, ch. 2), holding out the project's 5,000 validation images so both do equal work.

    The file is read as keras.datasets.mnist.load_data reads it (np.load), without its download-and-hash step,
    so a cut file (gpu_check.py --scale) works too.
    """
    import keras
    import numpy as np
    from keras import layers, models

    keras.utils.set_random_seed(42)
    with np.load(data_dir / "mnist.npz", allow_pickle=False) as f:
        (train_images, train_labels), (test_images, test_labels) = (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    train_images = train_images.reshape((len(train_images), 28 * 28)).astype("float32") / 255
    test_images = test_images.reshape((len(test_images), 28 * 28)).astype("float32") / 255
    train_labels = keras.utils.to_categorical(train_labels)
    test_labels = keras.utils.to_categorical(test_labels)
    network = models.Sequential([keras.Input((28 * 28,)), layers.Dense(512, activation="relu"),
                                 layers.Dense(10, activation="softmax")])
    network.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    v = validation
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


def _imdb_project_splits(data_dir: Path, validation: int = 10000):
    """IMDB as the project loads it (src.data: CSR multi-hot rows, the lab's split), without Keras."""
    from omegaconf import OmegaConf

    from src import config
    from src.data import datasets as data

    cfg = OmegaConf.merge(OmegaConf.structured(config.DatasetConfig), config.options("dataset")["imdb"])
    cfg.sha256 = None  # a baseline: also cut or synthetic files (benchmarks/gpu_check.py --scale)
    cfg.validation_size = validation
    return data.load(cfg, data_dir)


def dense_imdb(epochs: int, data_dir: Path, validation: int = 10000) -> None:
    """Plain Keras on dense float32 multi-hot matrices (the lab's values, built vectorised)."""
    ds = _imdb_project_splits(data_dir, validation)
    dense = {name: (split.x.toarray(), split.y) for name, split in
             (("train", ds.train), ("val", ds.val), ("test", ds.test))}
    del ds
    import keras

    keras.utils.set_random_seed(42)
    model = _imdb_model(keras.Input((10000,)))
    _fit_report(model, *dense["train"], dense["val"], dense["test"], epochs, 512)


def batches_imdb(epochs: int, data_dir: Path) -> None:
    """Plain Keras fed as src/training/batches.py feeds the project (CSR through Keras's sparse path into a sparse Input
    on TensorFlow; MultiHotBatches, dense per batch, elsewhere): the project's input path, nothing else of it."""
    ds = _imdb_project_splits(data_dir)
    import keras

    from src.training import batches

    keras.utils.set_random_seed(42)
    model = _imdb_model(keras.Input((10000,), sparse=batches.sparse_inputs()))
    timer = _timer()
    REPORT["backend"] = keras.backend.backend()
    model.fit(**batches.fit_args(ds.train, 512, shuffle=True, seed=42), epochs=epochs,
              validation_data=batches.validation_data(ds.val, 512), callbacks=[timer], verbose=2)
    test = model.evaluate(**batches.fit_args(ds.test, 512), return_dict=True, verbose=0)
    REPORT["test"] = {"test_" + k: float(v) for k, v in test.items()}


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
                       "batches_imdb": batches_imdb}
            runners[mode](int(rest[0]), Path(rest[1]), *map(int, rest[2:]))  # [VALIDATION]: held-out samples
    finally:
        _save()


if __name__ == "__main__":
    main()
