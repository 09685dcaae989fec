"""A sweep's summary (src/sweeps/sweep.py: summary): the Markdown table put on the parent run and printed to the
driver's log, and the best finished child. Runs are MLflow entities made in memory, as search_runs returns them.

The sweep itself (the callback, real child runs): tests/test_sweep.py and tests/test_objective.py.
"""

from __future__ import annotations

import json

import pytest
from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

from src.sweeps import sweep


def child(run_id, status="FINISHED", overrides=None, metrics=None, **tags):
    """A child run; `tags` with dots written as __ (slurm__job_id); `overrides` None: no sweep.overrides tag."""
    info = RunInfo(run_id, "0", "u", status, 0, 1, "active", run_name=f"run-{run_id[:4]}")
    all_tags = [RunTag(k.replace("__", "."), v) for k, v in tags.items()]
    if overrides is not None:
        all_tags.append(RunTag("sweep.overrides", json.dumps(overrides)))
    # as src.train logs them: each run's objective (its best epoch's value; here its only epoch) beside the final one
    metrics = {**(metrics or {}), **{f"best_{k}": v for k, v in (metrics or {}).items() if not k.startswith("test_")}}
    return Run(info, RunData(metrics=[Metric(k, v, 0, 1) for k, v in metrics.items()], tags=all_tags))


A = "aaaaaaaa" + "1" * 24
B = "bbbbbbbb" + "2" * 24
C = "cccccccc" + "3" * 24
D = "dddddddd" + "4" * 24

# Job 0 has the highest val_accuracy, job 1 the lowest val_loss among the finished jobs; the FAILED job 2
# would beat both; job 3 finished without validation metrics. Only the learning rate and model vary.
SWEEP = [
    child(A, "FINISHED", ["hardware=cpu", "optimizer.learning_rate=0.1", "model=mnist_dense"],
          {"val_loss": 0.5, "val_accuracy": 0.95, "test_loss": 0.55, "test_accuracy": 0.94321}, slurm__job_id="100"),
    child(B, "FINISHED", ["hardware=cpu", "optimizer.learning_rate=0.01", "model=mnist_cnn"],
          {"val_loss": 0.2, "val_accuracy": 0.9, "loss": 0.1},
          slurm__job_id="105", slurm__array_job_id="100", slurm__array_task_id="1"),
    child(C, "FAILED", ["hardware=cpu", "optimizer.learning_rate=0.001", "model=mnist_dense"],
          {"val_loss": 0.1, "val_accuracy": 0.99}),
    child(D, "FINISHED", ["hardware=cpu", "optimizer.learning_rate=0.0001", "model=mnist_dense"], {"loss": 0.05}),
]

TABLE = """\
| run | status | model | optimizer.learning_rate | val_loss | val_accuracy | test_loss | test_accuracy | slurm job |
|---|---|---|---|---|---|---|---|---|
| aaaaaaaa | FINISHED | mnist_dense | 0.1 | 0.5000 | 0.9500 | 0.5500 | 0.9432 | 100 |
| bbbbbbbb | FINISHED | mnist_cnn | 0.01 | 0.2000 | 0.9000 |  |  | 100_1 |
| cccccccc | FAILED | mnist_dense | 0.001 | 0.1000 | 0.9900 |  |  |  |
| dddddddd | FINISHED | mnist_dense | 0.0001 |  |  |  |  |  |"""


@pytest.mark.parametrize(
    "monitor,best,line",
    [
        ("val_loss", B,
         f"Best run by its best epoch's val_loss (lowest): bbbbbbbb (optimizer.learning_rate=0.01 model=mnist_cnn), "
         f"best_val_loss = 0.2000, run id {B}"),
        ("val_accuracy", A,
         f"Best run by its best epoch's val_accuracy (highest): aaaaaaaa (optimizer.learning_rate=0.1 model=mnist_dense), "
         f"best_val_accuracy = 0.9500, run id {A}"),
        ("loss", D,  # job 3 has no validation metrics, but it finished and has this one
         f"Best run by its best epoch's loss (lowest): dddddddd (optimizer.learning_rate=0.0001 model=mnist_dense), "
         f"best_loss = 0.0500, run id {D}"),
    ],
)
def test_the_summary_tables_every_child_in_order_and_names_the_best_finished_one(monitor, best, line):
    """Columns: the overrides that vary (sorted), the final metrics, the SLURM job (array job_task for a task).
    The best run's line gives its varying overrides as its command line did."""
    text, chosen = sweep.summary(SWEEP, monitor=monitor)
    assert chosen.info.run_id == best
    assert text == f"# Sweep: 4 runs, 3 finished\n\n{TABLE}\n\n{line}\n"


def test_the_summary_says_so_when_no_finished_run_has_the_monitor():
    text, chosen = sweep.summary(SWEEP, monitor="test_loss_of_nothing")
    assert chosen is None
    assert text.endswith("\n\nNo finished run has best_test_loss_of_nothing.\n")
    failed_only = [SWEEP[2]]  # it has val_loss, but it did not finish
    text, chosen = sweep.summary(failed_only)
    assert chosen is None
    assert text.startswith("# Sweep: 1 runs, 0 finished\n")
    assert text.endswith("\n\nNo finished run has best_val_loss.\n")


def test_the_summary_of_a_sweep_without_children():
    text, chosen = sweep.summary([])
    assert chosen is None
    assert text == (
        "# Sweep: 0 runs, 0 finished\n\n"
        "| run | status | val_loss | val_accuracy | test_loss | test_accuracy | slurm job |\n"
        "|---|---|---|---|---|---|---|\n\n"
        "No finished run has best_val_loss.\n"
    )


def test_when_no_override_varies_all_are_shown():
    """A sweep over one value (or jobs given the same overrides) still says what they ran with."""
    same = ["seed=1", "hydra.job.env_set.X=a=b"]  # a value may hold "=" itself
    runs = [child(A, "FINISHED", same, {"val_loss": 0.3}), child(B, "RUNNING", same, {"val_loss": 0.1})]
    text, chosen = sweep.summary(runs)
    assert chosen.info.run_id == A  # RUNNING is not finished, however good
    assert text == (
        "# Sweep: 2 runs, 1 finished\n\n"
        "| run | status | hydra.job.env_set.X | seed | val_loss | val_accuracy | test_loss | test_accuracy | slurm job |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| aaaaaaaa | FINISHED | a=b | 1 | 0.3000 |  |  |  |  |\n"
        "| bbbbbbbb | RUNNING | a=b | 1 | 0.1000 |  |  |  |  |\n\n"
        f"Best run by its best epoch's val_loss (lowest): aaaaaaaa (seed=1 hydra.job.env_set.X=a=b), best_val_loss = 0.3000, run id {A}\n"
    )


def test_a_child_without_overrides_shows_empty_cells():
    """A child whose job never tagged its overrides (or an empty list) differs in every key the others have."""
    runs = [child(A, "FINISHED", ["seed=1"], {"val_loss": 0.3}), child(B, "FINISHED", None, {"val_loss": 0.1}),
            child(C, "FINISHED", [], {"val_loss": 0.2})]
    text, chosen = sweep.summary(runs)
    assert chosen.info.run_id == B
    assert text.splitlines()[4:7] == [
        "| aaaaaaaa | FINISHED | 1 | 0.3000 |  |  |  |  |",
        "| bbbbbbbb | FINISHED |  | 0.1000 |  |  |  |  |",
        "| cccccccc | FINISHED |  | 0.2000 |  |  |  |  |",
    ]
    assert text.endswith(f"Best run by its best epoch's val_loss (lowest): bbbbbbbb (), best_val_loss = 0.1000, run id {B}\n")


def test_the_best_run_is_the_one_with_the_best_epoch_not_the_best_last_epoch():
    """What src.train returns to sweepers (its best epoch) decides, as in compare: job A peaked at 0.1 and ended
    at 0.6, job B never went below 0.3 but ended there. A is the best run."""
    a = child(A, "FINISHED", ["seed=1"], {"val_loss": 0.6})
    b = child(B, "FINISHED", ["seed=2"], {"val_loss": 0.3})
    a.data._add_metric(Metric("best_val_loss", 0.1, 0, 0))
    text, chosen = sweep.summary([a, b])
    assert chosen.info.run_id == A
    assert text.endswith(f"Best run by its best epoch's val_loss (lowest): aaaaaaaa (seed=1), best_val_loss = 0.1000, run id {A}\n")
