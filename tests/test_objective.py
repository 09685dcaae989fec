"""Every objective direction: a loss is best when lowest, an accuracy when highest, wherever "best" is
chosen (the sweep's summary and parent tags, compare's best columns, the value src.train returns to
sweepers). Real runs in a temporary SQLite store; the values are chosen so min, max, first and last differ.
"""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from src import compare, config, train
from src.sweeps import sweep

# (val_loss, val_accuracy) per child: the lowest loss (job 1) and the highest accuracy (job 2) are
# different runs, neither first nor last among the finished ones; the FAILED job 3 would beat both.
CHILDREN = [(0.5, 0.80), (0.2, 0.70), (0.9, 0.95), (0.1, 0.99, "FAILED"), (0.6, 0.75)]


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('objective') / 'mlflow.db'}")


@pytest.fixture(scope="module")
def sweep_runs(client):
    """A parent run and its children as a multirun leaves them: (parent id, {job number: run id})."""
    experiment_id = client.create_experiment("sweep-directions")
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    ids = {}
    for num, (val_loss, val_accuracy, *status) in enumerate(CHILDREN):
        tags = {"mlflow.parentRunId": parent, "sweep.job_num": str(num),
                "sweep.overrides": json.dumps([f"optimizer.learning_rate={10.0 ** -num}"])}
        run_id = client.create_run(experiment_id, tags=tags, run_name=f"job{num}").info.run_id
        client.log_metric(run_id, "val_loss", val_loss, step=1)
        client.log_metric(run_id, "val_accuracy", val_accuracy, step=1)
        client.log_metric(run_id, "loss", val_loss - 0.05, step=1)  # training metrics: same order
        client.log_metric(run_id, "accuracy", val_accuracy + 0.005, step=1)
        for key, value in client.get_run(run_id).data.metrics.items():  # the objectives, as src.train logs them
            client.log_metric(run_id, f"best_{key}", value, step=0)
        client.set_terminated(run_id, status[0] if status else "FINISHED")
        ids[num] = run_id
    return parent, ids


@pytest.mark.parametrize("monitor,job,word", [("val_loss", 1, "lowest"), ("val_accuracy", 2, "highest"),
                                              ("loss", 1, "lowest"), ("accuracy", 2, "highest")])
def test_sweep_summary_picks_the_best_in_the_monitors_direction(client, sweep_runs, monitor, job, word):
    parent, ids = sweep_runs
    children = sweep._children(client, parent)
    assert [c.info.run_id for c in children] == [ids[n] for n in range(len(CHILDREN))]
    text, best = sweep.summary(children, monitor=monitor)
    assert best.info.run_id == ids[job]
    assert f"Best run by its best epoch's {monitor} ({word}): {ids[job][:8]}" in text


@pytest.mark.parametrize("monitor,job", [("val_loss", 1), ("val_accuracy", 2)])
def test_sweep_parent_is_tagged_with_the_best_in_the_monitors_direction(client, sweep_runs, tmp_path, monitor, job):
    parent, ids = sweep_runs
    callback = sweep.MLflowSweep()
    callback.parent_run_id, callback.sweep_dir, callback.monitor = parent, tmp_path, monitor
    callback._uri = client.tracking_uri
    callback._finish("FINISHED")
    tags = client.get_run(parent).data.tags
    assert tags["best_run_id"] == ids[job]
    assert float(tags[f"best_{monitor}"]) == CHILDREN[job][["val_loss", "val_accuracy"].index(monitor)]


def test_compare_best_columns_take_the_lowest_loss_and_the_highest_accuracy(client):
    experiment_id = client.create_experiment("compare-directions")
    run_id = client.create_run(experiment_id).info.run_id
    # best loss at epoch 3, best accuracy at epoch 2; neither is the first nor the last epoch
    history = {"loss": [0.9, 0.8, 0.7, 0.75], "val_loss": [0.6, 0.5, 0.3, 0.4],
               "val_accuracy": [0.7, 0.95, 0.9, 0.8], "accuracy": [0.5, 0.6, 0.7, 0.8]}
    for key, values in history.items():
        for step, value in enumerate(values, start=1):
            client.log_metric(run_id, key, value, step=step)
    client.set_terminated(run_id)

    summary = compare.summarise(client, client.get_run(run_id))
    header, [row] = compare.table([summary])
    cells = dict(zip(header, row))
    assert cells["best val_loss (ep)"] == "0.3000 (3)" and cells["final val_loss"] == "0.4000"
    assert cells["best val_acc (ep)"] == "0.9500 (2)" and cells["final val_acc"] == "0.8000"


@pytest.mark.parametrize("monitor,winner", [("val_loss", "peaked"), ("val_accuracy", "steady")])
def test_compare_names_the_best_run_by_its_best_epoch_as_the_sweep_does(client, monitor, winner):
    """compare marks the run whose best epoch of trainer.monitor is best (what src.train returns), not the best last
    epoch: 'peaked' reached val_loss 0.1 then overfit to 0.6; 'steady' ended at 0.3 with the higher accuracy."""
    experiment_id = client.create_experiment(f"compare-best-{monitor}")
    histories = {"peaked": {"val_loss": [0.4, 0.1, 0.6], "val_accuracy": [0.80, 0.85, 0.70]},
                 "steady": {"val_loss": [0.5, 0.4, 0.3], "val_accuracy": [0.80, 0.88, 0.90]},
                 "failed": {"val_loss": [0.01, 0.01, 0.01], "val_accuracy": [0.99, 0.99, 0.99]}}
    summaries = {}
    for name, history in histories.items():
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        client.log_param(run_id, "trainer.monitor", monitor)
        for key, values in history.items():
            for step, value in enumerate(values, start=1):
                client.log_metric(run_id, key, value, step=step)
        client.set_terminated(run_id, "FAILED" if name == "failed" else "FINISHED")
        summaries[name] = compare.summarise(client, client.get_run(run_id))
    best, chosen_monitor, value, epoch = compare.best_run(list(summaries.values()))
    assert (best.name, chosen_monitor) == (winner, monitor)
    assert (value, epoch) == ((0.1, 2) if winner == "peaked" else (0.90, 3))
    label = {s.run_id: s.name for s in summaries.values()}
    assert compare.best_line(list(summaries.values()), label).startswith(
        f"Best run: {best.run_id[:8]} ({winner}), {monitor} {value:.4f} at epoch {epoch}")


@pytest.mark.parametrize("monitor,expected", [("val_loss", 0.3), ("loss", 0.7), ("val_accuracy", 0.95), ("accuracy", 0.8)])
def test_objective_is_the_best_epoch_in_the_monitors_direction(monitor, expected):
    history = {"loss": [0.9, 0.8, 0.7, 0.75], "val_loss": [0.6, 0.5, 0.3, 0.4],
               "val_accuracy": [0.7, 0.95, 0.9, 0.8], "accuracy": [0.5, 0.6, 0.7, 0.8]}
    assert config.best(history[monitor], monitor) == expected  # what train() returns


@pytest.mark.trains
def test_training_returns_the_highest_val_accuracy_to_sweepers(train_run, store):
    """The real training: with trainer.monitor=val_accuracy, src.train returns max over epochs."""
    # a small learning rate, so the two epochs' accuracies differ and min, max and last are told apart
    objective, run = train_run("trainer.monitor=val_accuracy", "trainer.epochs=2", "tracking.log_model=false",
                               "optimizer.learning_rate=0.00001")
    history = sorted(MlflowClient(store).get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)
    values = [m.value for m in history]
    assert len(set(values)) == 2, values
    assert math.isclose(objective, max(values), rel_tol=1e-6)
    # logged as the run's objective, which the sweep summary and compare rank by
    assert math.isclose(run.data.metrics["best_val_accuracy"], objective, rel_tol=1e-6)
