"""A multirun with the basic launcher: one MLflow parent run, the jobs as children, a summary.

(The same with hydra/launcher=slurm on the local cluster is in test_slurm.py.)
"""

from __future__ import annotations

import json

import mlflow
from mlflow.tracking import MlflowClient

from conftest import base_overrides, run_cli
from src.sweeps import sweep


def parent_and_children(experiment: str):
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1  # every job is a child of the one parent
    return parents[0], children


def summary_text(run_id: str, tmp_path) -> str:
    path = MlflowClient().download_artifacts(run_id, sweep.SUMMARY_FILE, str(tmp_path))
    return open(path).read()


def test_multirun_has_one_parent_with_a_summary(data_dir, store, experiment, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        ["-m", *base_overrides(data_dir, store, experiment), f"hydra.sweep.dir={sweep_dir}",
         "optimizer.learning_rate=0.001,0.01"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = parent_and_children(experiment)
    assert json.loads((sweep_dir / sweep.PARENT_FILE).read_text())["run_id"] == parent.info.run_id
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(json.loads(c.data.tags["sweep.overrides"])[-1] for c in children) == [
        "optimizer.learning_rate=0.001", "optimizer.learning_rate=0.01"
    ]
    assert sorted(c.info.start_time for c in children)[0] >= parent.info.start_time  # parent first

    text = summary_text(parent.info.run_id, tmp_path)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert "optimizer.learning_rate" in lines[0] and "data_dir" not in lines[0]  # only what varies
    assert len(lines) == 3  # header and one row per child
    best = min(children, key=lambda c: c.data.metrics["val_loss"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert f"best_val_loss = {best.data.metrics['best_val_loss']:.4f}" in text
    assert "Sweep summary" in result.stdout + result.stderr  # also in the driver's log


def test_failed_sweep_still_ends_its_parent_and_refuses_a_second_sweep_in_its_folder(
    data_dir, store, experiment, tmp_path
):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *base_overrides(data_dir, store, experiment), f"hydra.sweep.dir={sweep_dir}"]
    failed = run_cli([*args, "optimizer.learning_rate=0.01,-1"])  # the second job fails validation
    assert failed.returncode != 0
    parent, children = parent_and_children(experiment)
    assert parent.info.status == "FAILED"
    assert [c.info.status for c in children] == ["FINISHED"]  # the invalid job never started a run
    assert "1 runs, 1 finished" in summary_text(parent.info.run_id, tmp_path)

    again = run_cli([*args, "optimizer.learning_rate=0.02,0.03"])
    assert again.returncode != 0
    assert "belongs to another sweep" in again.stdout + again.stderr
    assert "optimizer.learning_rate=0.01,-1" in again.stdout + again.stderr  # the command that continues it
    assert len(mlflow.search_runs(experiment_names=[experiment], output_format="list")) == 2  # nothing new


def test_summary_lists_children_in_sweep_order_and_names_the_best():
    from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

    def child(num, lr, val_loss, status="FINISHED"):
        info = RunInfo(f"id{num}" * 4, "0", "u", status, 0, 1, "active", run_name=f"job{num}")
        tags = [RunTag("sweep.overrides", json.dumps(["hardware=cpu", f"optimizer.learning_rate={lr}"])),
                RunTag("sweep.job_num", str(num))]
        return Run(info, RunData(metrics=[Metric("val_loss", val_loss, 0, 1), Metric("best_val_loss", val_loss, 0, 0)],
                                 tags=tags))

    text, best = sweep.summary([child(0, 0.1, 0.5), child(1, 0.01, 0.2), child(2, 0.001, 0.1, "FAILED")])
    assert best.info.run_name == "job1"  # the lowest val_loss among the finished runs
    header = text.splitlines()[2]
    assert "optimizer.learning_rate" in header and "hardware" not in header


def test_the_sweep_callback_pickles_while_its_heartbeat_runs(store, experiment):
    """hydra-submitit-launcher pickles Hydra's callbacks with every job it submits to SLURM."""
    import cloudpickle
    from mlflow.tracking import MlflowClient

    from src.tracking import liveness

    client = MlflowClient(store)
    run = client.create_run(client.create_experiment(experiment))
    callback = sweep.MLflowSweep()
    callback.parent_run_id = run.info.run_id
    callback._heartbeat = liveness.Heartbeat(client, run.info.run_id).start()
    try:
        copy = cloudpickle.loads(cloudpickle.dumps(callback))
    finally:
        callback._heartbeat.stop()
    assert copy.parent_run_id == run.info.run_id and copy._heartbeat is None
