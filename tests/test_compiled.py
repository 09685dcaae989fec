"""trainer.loop=compiled (src/training/compiled.py): one compiled program per epoch on Keras's JAX backend.

These train in this process, so they need Keras on JAX: run them with KERAS_BACKEND=jax (the lead's CI runs
the suite under each backend); under another backend they are skipped, except the refusal, which needs no
Keras. Real Keras training on the synthetic files of conftest.py, no mocks.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import BACKEND, TINY, base_overrides, compose, train_composed
from src.training import callbacks, loop
from src import config
from src.tracking import names

jax_only = pytest.mark.skipif(BACKEND != "jax", reason="trains in this process on Keras's JAX backend: KERAS_BACKEND=jax")
KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s")


def steps(run_id: str) -> dict[str, list[int]]:
    client = MlflowClient()
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in KEYS}


def test_compiled_is_refused_on_another_backend(data_dir, store, experiment, tmp_path):
    cfg = compose([*base_overrides(data_dir, store, experiment), "backend=tensorflow", "trainer.loop=compiled"],
                  output_dir=tmp_path)
    with pytest.raises(config.ConfigError, match="trainer.loop=compiled needs the JAX backend.*Fix: backend=jax"):
        train_composed(cfg)  # refused before Keras is imported: the backend in this process does not matter
    assert not mlflow.search_runs(experiment_names=[experiment], output_format="list")
    mirrored = compose(["backend=jax", "trainer.loop=compiled", "hardware=multi_gpu"])
    with pytest.raises(config.ConfigError, match="one device"):
        loop.check(mirrored, config.Backend.jax)


# ---------------------------------------------------------------------------------------------
# The loop itself, against Keras's own steps


def _setup(data_dir, model="mnist_dense", *overrides):
    """The data and a freshly built, compiled model of `model` (seeded), as train.py builds them."""
    import keras

    from src.data import datasets as data
    from src.training import models

    cfg = compose([f"data_dir={data_dir}", "dataset.sha256=null", "dataset.validation_size=100",
                   f"model={model}", *overrides])
    ds = data.load(cfg.dataset, data_dir)

    def build():
        keras.utils.set_random_seed(7)
        m = models.build_model(cfg.model, ds.spec)
        m.compile(optimizer=models.build_optimizer(cfg.optimizer), loss=ds.spec.loss, metrics=["accuracy"])
        return m

    return ds, build


@jax_only
@pytest.mark.parametrize("model", ["mnist_dense", "imdb_dropout"])
def test_an_epoch_is_keras_train_steps_over_the_shuffled_order(data_dir, model):
    """One compiled epoch = Keras's train_on_batch over the epoch's order, batch by batch, the last one
    smaller: the same weights (Dropout masks included: imdb_dropout), the same number of steps."""
    from src.training import compiled

    ds, build = _setup(data_dir, model, "model.rate=0.5")
    batch = 64  # MNIST: 500 training samples, 7 full batches and one of 52; IMDB: 300, 4 and one of 44
    model_c = build()
    epochs = compiled.Epochs(model_c, ds, batch, seed=3, budget_bytes=10**9)
    epochs.build(epochs.rows("train"))
    epochs.plan(epochs.rows("train"))
    logs = epochs.train_epoch(epochs.rows("train"), epoch=0)

    model_k = build()
    order = np.asarray(epochs._order(0, n=len(ds.train)))
    assert sorted(order) == list(range(len(ds.train)))  # every sample once
    losses, sizes = [], []
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        x = ds.train.x[rows]
        x = x.toarray() if hasattr(x, "toarray") else x
        losses.append(model_k.train_on_batch(x, ds.train.y[rows], return_dict=True))
        sizes.append(len(rows))
    assert sizes[-1] == len(ds.train) % batch
    assert int(model_c.optimizer.iterations) == int(model_k.optimizer.iterations) == len(sizes)
    for a, b in zip(model_c.get_weights(), model_k.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The epoch's logs: means over samples of every step's values (train_on_batch resets its metrics each call).
    for key in ("loss", "accuracy"):
        assert logs[key] == pytest.approx(np.average([s[key] for s in losses], weights=sizes), rel=1e-4), key


@jax_only
@pytest.mark.parametrize("model", ["mnist_dense", "imdb_dense"])
def test_evaluation_equals_keras_evaluate(data_dir, model):
    """Validation/test: means over samples with a smaller last batch, multi-hot rows built on the device."""
    from src.training import batches
    from src.training import compiled

    ds, build = _setup(data_dir, model)
    m = build()
    expected = m.evaluate(**batches.fit_args(ds.test, 64), return_dict=True, verbose=0)
    for budget in (10**9, 1):  # on the device, and streamed one batch at a time
        got = compiled.Epochs(m, ds, 64, seed=0, budget_bytes=budget).evaluate("test")
        assert got == pytest.approx(expected, rel=1e-5)


@jax_only
def test_multi_hot_rows_are_the_csr_rows(data_dir):
    import jax.numpy as jnp

    from src.training import compiled

    ds, _ = _setup(data_dir, "imdb_dense", "dataset.num_bins=64")
    r = compiled.rows(ds.train)
    assert r.x.dtype == np.uint16 and r.nbytes == compiled.device_bytes(ds.train)
    dense = np.asarray(compiled._model_inputs(jnp.asarray(r.x), r.width))
    np.testing.assert_array_equal(dense, ds.train.x.toarray())


@jax_only
def test_compiled_and_fit_learn_alike(data_dir):
    """The same data, seed and epochs through both loops: the same number of steps, close metrics
    (the shuffles and Dropout masks differ: fit draws from numpy, compiled epochs from jax.random)."""
    from src.training import batches
    from src.training import compiled

    ds, build = _setup(data_dir, "mnist_dense", "model.rate=0.2")
    fit_model = build()
    fit = fit_model.fit(**batches.fit_args(ds.train, 64, shuffle=True, seed=7),
                        validation_data=batches.validation_data(ds.val, 64), epochs=3, verbose=0).history
    comp_model = build()
    comp = compiled.Epochs(comp_model, ds, 64, seed=7, budget_bytes=10**9).fit(3, verbose=0)
    assert set(comp) == set(fit)
    assert int(comp_model.optimizer.iterations) == int(fit_model.optimizer.iterations) == 3 * 8
    for key in ("loss", "val_loss"):
        assert comp[key][0] == pytest.approx(fit[key][0], rel=0.3), key
        assert comp[key][-1] < comp[key][0]
    assert comp["val_accuracy"][-1] == pytest.approx(fit["val_accuracy"][-1], abs=0.05)


@jax_only
def test_streamed_chunks_train_exactly_as_on_the_device(data_dir, caplog):
    """Over the budget, chunks of whole batches in the same order: the same training, not an OOM."""
    from src.training import compiled

    ds, build = _setup(data_dir, "imdb_dropout")
    train, val = compiled.rows(ds.train), compiled.rows(ds.val)
    batch = 16  # 300 training samples: 18 full batches and one of 12
    tight = val.nbytes + int(3.5 * train.nbytes / len(train) * batch)  # validation, and 3 training batches
    assert train.nbytes > tight
    results = {}
    for budget in (10**9, tight):  # everything on the device; training data in chunks of 3 batches
        m = build()
        epochs = compiled.Epochs(m, ds, batch, seed=5, budget_bytes=budget)
        with caplog.at_level("INFO", logger="src.training.compiled"):
            results[budget] = (epochs.fit(2, verbose=0), m.get_weights())
    assert "streamed in chunks of 3 batches, validation data (0.0 MB) on the device" in caplog.text
    (h1, w1), (h2, w2) = results.values()
    assert h1.keys() == h2.keys()
    for key in h1:
        assert h1[key] == pytest.approx(h2[key], rel=1e-4), key
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@jax_only
def test_early_stopping_restores_the_best_epoch(data_dir):
    """EarlyStopping sees each epoch's logs and weights, and its restored weights are what fit leaves."""
    import keras

    from src.training import compiled

    ds, build = _setup(data_dir, "mnist_dense")
    m = build()
    seen = []

    class Weights(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((logs["val_loss"], [w.copy() for w in self.model.get_weights()]))

    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=1, restore_best_weights=True)
    history = compiled.Epochs(m, ds, 64, seed=1, budget_bytes=10**9).fit(
        30, callbacks=[Weights(), stop], verbose=0)
    assert 2 <= len(history["loss"]) < 30  # 1.0 validation accuracy cannot improve: stopped early
    best = int(np.argmax(history["val_accuracy"]))  # the first epoch with the highest accuracy
    for a, b in zip(m.get_weights(), seen[best][1]):
        np.testing.assert_array_equal(a, b)
    assert stop.stopped_epoch == len(history["loss"]) - 1


# ---------------------------------------------------------------------------------------------
# Through train(): MLflow, the epoch backup, resume, NaN, the budget


@jax_only
def test_run_logs_one_point_per_epoch_and_the_resolved_loop(train_run, caplog):
    with caplog.at_level("INFO"):
        objective, run = train_run("trainer.loop=compiled", "trainer.epochs=3")
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.LOOP_RESOLVED] == "compiled"
    assert steps(run.info.run_id) == {k: [1, 2, 3] for k in KEYS}
    assert run.data.metrics["test_accuracy"] > 0.9
    assert objective == pytest.approx(min(m.value for m in MlflowClient().get_metric_history(run.info.run_id, "val_loss")))
    assert "Training loop: compiled (trainer.loop=compiled" in caplog.text


@jax_only
def test_auto_on_a_cpu_follows_the_measurement(train_run):
    _, run = train_run()  # trainer.loop=auto, hardware=cpu
    assert run.data.tags[names.LOOP_RESOLVED] == loop.AUTO_ON_CPU.value


@jax_only
def test_tiny_budget_streams_and_still_trains(train_run, caplog):
    with caplog.at_level("INFO"):
        _, run = train_run("trainer.loop=compiled", "hardware.device_data_budget=1e-12", "trainer.epochs=2")
    assert "streamed in chunks of 1 batches" in caplog.text
    assert run.info.status == "FINISHED" and run.data.metrics["test_accuracy"] > 0.9


@jax_only
def test_nan_stops_after_the_epoch_and_fails(train_run, experiment):
    from src.training import record

    with pytest.raises(record.Diverged, match=r"loss became NaN at epoch \d+") as raised:
        train_run("trainer.loop=compiled", "optimizer=sgd", "optimizer.learning_rate=1e30", "trainer.epochs=20")
    epoch = int(str(raised.value).split("at epoch ")[1].split(":")[0])
    assert epoch < 20  # TerminateOnNaN saw the epoch's loss: stopped after that epoch
    [run] = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert run.info.status == "FAILED"
    assert steps(run.info.run_id)["loss"] == list(range(1, epoch + 1))  # the NaN epoch too, as with fit


@jax_only
def test_resumed_compiled_run_equals_an_uninterrupted_one(data_dir, store, experiment, tmp_path, monkeypatch):
    """Killed after epoch 2, resumed: the same MLflow run, each epoch once, and the same numbers as an
    uninterrupted run (the order of epoch k depends on the seed and k only)."""

    def run(name, *overrides):
        cfg = compose([*base_overrides(data_dir, store, experiment), "trainer.loop=compiled", "trainer.epochs=3",
                       f"trainer.backup_dir={tmp_path / name}", *overrides], output_dir=tmp_path / name)
        return train_composed(cfg)

    straight = run("straight")
    original = callbacks.MLflowMetrics.on_epoch_end

    def interrupt(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch + 1 == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.MLflowMetrics, "on_epoch_end", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run("resumed")
    state = json.loads((tmp_path / "resumed" / "state.json").read_text())
    assert len(state["epochs"]) == 2
    monkeypatch.undo()
    resumed = run("resumed")
    assert resumed == pytest.approx(straight, rel=1e-4)
    finished = [r for r in mlflow.search_runs(experiment_names=[experiment], output_format="list")
                if r.info.run_id == state["run_id"]]
    assert finished[0].info.status == "FINISHED"
    assert steps(state["run_id"]) == {k: [1, 2, 3] for k in KEYS}


@jax_only
def test_auto_picks_compiled_on_an_accelerator_within_the_budget(data_dir, monkeypatch):
    """The decision alone, with a stand-in GPU (this machine has none): compiled within the budget, fit above."""
    import jax

    from src.data import datasets as data

    class Gpu:
        platform = "gpu"

        def memory_stats(self):
            return {"bytes_limit": 8 * 10**9, "bytes_in_use": 10**9}

    cfg = compose([f"data_dir={data_dir}", "dataset.sha256=null", "dataset.validation_size=100", "backend=jax",
                   "hardware=gpu"])
    ds = data.load(cfg.dataset, data_dir)
    monkeypatch.setattr(jax, "devices", lambda *args: [Gpu()])
    chosen = loop.resolve(cfg, config.Backend.jax, ds)
    assert chosen.compiled and chosen.budget_bytes == 0.5 * 7 * 10**9
    cfg.hardware.device_data_budget = 1e-6  # 7 kB: less than the data
    chosen = loop.resolve(cfg, config.Backend.jax, ds)
    assert chosen.loop == config.Loop.fit and "over the budget" in chosen.why
    cfg.trainer.loop = "compiled"  # asked for: streamed instead
    assert "streamed in chunks" in loop.resolve(cfg, config.Backend.jax, ds).why


@jax_only
def test_mixed_precision_trains_compiled(train_run):
    """Keras's loss-scaling optimizer goes through the scan like any other (its state is optimizer variables)."""
    _, run = train_run("trainer.loop=compiled", "hardware.mixed_precision=true", "trainer.epochs=2")
    assert run.info.status == "FINISHED" and run.data.metrics["test_accuracy"] > 0.9


def test_both_loops_share_one_interface(data_dir):
    """train() builds one loop and calls fit(epochs, initial_epoch, callbacks) and evaluate(split): Keras fit on any
    backend, compiled epochs on JAX; each returns this call's history and a metrics dict."""
    import keras

    from src.data import datasets as data
    from src.training import models

    cfg = compose(["dataset.sha256=null", *TINY])
    ds = data.load(cfg.dataset, data_dir)
    kinds = [loop.Resolved(config.Loop.fit, "test")]
    if BACKEND == "jax":
        import jax

        kinds.append(loop.Resolved(config.Loop.compiled, "test", 10**9, jax.devices("cpu")[0]))
    for resolved in kinds:
        keras.utils.set_random_seed(0)
        model = models.build_model(cfg.model, ds.spec)
        model.compile(optimizer=models.build_optimizer(cfg.optimizer), loss=ds.spec.loss, metrics=["accuracy"])
        training = loop.trainer(resolved, model, ds, compose(["dataset.sha256=null", *TINY, "trainer.verbose=0"]))
        history = training.fit(2, 0, [])
        assert sorted(history) == ["accuracy", "loss", "val_accuracy", "val_loss"] and len(history["loss"]) == 2
        assert len(training.fit(3, 2, [])["loss"]) == 1  # initial_epoch: only the epochs of this call
        assert sorted(training.evaluate("test")) == ["accuracy", "loss"]
