"""python -m src.compare on runs trained here: the table, the plot and report, logging to a sweep's parent."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from src import compare

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def two_runs(train_run, store, experiment):
    """relu vs sigmoid on the synthetic MNIST, two epochs each: (relu run, sigmoid run)."""
    _, relu = train_run("model.activation=relu", "trainer.epochs=2", "tracking.log_model=false")
    _, sigmoid = train_run("model.activation=sigmoid", "trainer.epochs=2", "tracking.log_model=false")
    return relu, sigmoid


def rows_of(output: str) -> dict[str, str]:
    """The printed table's data rows, keyed by the short run id in their first column."""
    lines = output.split("\n\n")[0].splitlines()
    return {line.split()[0]: line for line in lines[2:]}


def test_table_plot_and_report_for_run_ids_without_parent(two_runs, store, tmp_path, capsys):
    relu, sigmoid = two_runs
    out = tmp_path / "cmp"
    assert compare.main([relu.info.run_id, sigmoid.info.run_id, "--tracking-uri", store, "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    header = printed.splitlines()[0].split()
    assert header[:2] == ["run", "model.activation"]  # the one config value that differs, and nothing else
    assert "trainer.epochs" not in header and "optimizer.name" not in header
    rows = rows_of(printed)
    assert set(rows) == {relu.info.run_id[:8], sigmoid.info.run_id[:8]}
    for run, activation in ((relu, "relu"), (sigmoid, "sigmoid")):
        cells = rows[run.info.run_id[:8]].split()
        assert cells[1] == activation and cells[2] == "FINISHED" and cells[3] == "2"  # epochs
        assert f"{run.data.metrics['test_accuracy']:.4f}" in cells
        history = [m.value for m in MlflowClient(store).get_metric_history(run.info.run_id, "val_loss")]
        assert f"{min(history):.4f}" in cells and f"{history[-1]:.4f}" in cells

    assert (out / "compare.png").read_bytes()[:8] == PNG
    report = (out / "report.md").read_text()
    assert "| run | model.activation |" in report and "![" in report and relu.info.run_id in report
    assert "parent run" not in printed  # no parent: nothing logged anywhere


def test_experiment_name_and_parent_id_give_the_sweeps_runs_and_log_to_the_parent(
    two_runs, store, experiment, tmp_path, capsys
):
    relu, sigmoid = two_runs
    client = MlflowClient(store)
    parent = client.create_run(relu.info.experiment_id, run_name="sweep parent").info.run_id
    for child in two_runs:
        client.set_tag(child.info.run_id, compare.PARENT_TAG, parent)
    client.set_terminated(parent)

    assert compare.main([experiment, "--tracking-uri", store, "--out", str(tmp_path / "by-name")]) == 0
    by_name = capsys.readouterr().out
    assert set(rows_of(by_name)) == {relu.info.run_id[:8], sigmoid.info.run_id[:8]}  # the parent is no row
    assert f"to the parent run {parent}" in by_name
    logged = {a.path for a in client.list_artifacts(parent, "compare")}
    assert logged == {"compare/compare.png", "compare/report.md"}

    assert compare.main([parent, "--tracking-uri", store, "--out", str(tmp_path / "by-parent"), "--last", "1"]) == 0
    assert set(rows_of(capsys.readouterr().out)) == {sigmoid.info.run_id[:8]}  # the most recent child


def test_unknown_target_is_a_clear_error(store, capsys):
    mlflow.set_experiment("an-existing-experiment")
    assert compare.main(["no-such-experiment", "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert "'no-such-experiment' is neither a run id nor an experiment" in err
    assert "an-existing-experiment" in err and "Fix:" in err


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'nothing' / 'mlflow.db'}"
    assert compare.main(["le5", "--tracking-uri", uri]) == 2
    assert "there is no tracking store" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()  # looking does not create a store


def test_output_folder_names_keep_unicode_and_never_collide():
    names = ["Größe", "Grösse", "Gr-e", "Gr e", "Gr/e", "学习率", "学习率 2", "a" * 100, "a" * 99 + "b", "..", "mnist_lr"]
    slugs = [compare._slug([n]) for n in names]
    assert len(set(slugs)) == len(names), slugs
    assert compare._slug(["Größe"]) == "Größe" and compare._slug(["学习率"]) == "学习率"
    assert compare._slug(["mnist_lr"]) == "mnist_lr"  # plain names stay as they were
    assert compare._slug(["Gr/e"]).startswith("Gr-e-") and compare._slug(["Gr/e"]) == compare._slug(["Gr/e"])
    assert all("/" not in s and s not in (".", "..") and len(s) <= 80 for s in slugs)
