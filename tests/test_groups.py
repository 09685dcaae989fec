"""compare's groups (seeds aggregated) and sweep plots, on real SQLite stores filled through MLflow's API; and
src/report/groups.py's arithmetic on plain values."""

from __future__ import annotations

import math

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from sqlite_store import empty_store
from src import compare
from src.report import groups

PNG = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000_000


@pytest.fixture
def client(tmp_path):
    return MlflowClient(empty_store(tmp_path, current=False))


def make_run(client, experiment, parent, params, val_loss, minute=0, status="FINISHED"):
    """A child run of `parent` with one val_loss (and matching loss/accuracy) per epoch."""
    run_id = client.create_run(experiment, start_time=T0 + minute * 60_000,
                               tags={compare.PARENT_TAG: parent}).info.run_id
    history = {"val_loss": val_loss, "loss": val_loss, "val_accuracy": [1 - v / 2 for v in val_loss],
               "accuracy": [1 - v / 2 for v in val_loss]}
    metrics = [Metric(k, v, T0 + i, i) for k, vs in history.items() for i, v in enumerate(vs)]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run_id, status, end_time=T0 + minute * 60_000 + 30_000)
    return run_id


def sweep(client, tmp_path, points):
    """A parent and one child per (params, val_loss per epoch); returns (parent, child ids)."""
    experiment = client.create_experiment("sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    children = [make_run(client, experiment, parent, {"dataset.name": "mnist", "data_dir": f"/d{n}", **p}, v,
                         minute=n) for n, (p, v) in enumerate(points)]
    client.set_terminated(parent)
    return parent, children


# lr 1e-3 is better on average (mean best val_loss 0.157) though lr 1e-2 has the single luckiest run (0.1308)
LR_SEED = [({"optimizer.learning_rate": lr, "seed": seed}, [v + 0.1, v])
           for lr, values in (("0.001", (0.155, 0.157, 0.159)), ("0.01", (0.1308, 0.2256, 0.2256)))
           for seed, v in zip((1, 2, 3), values)]


def run_compare(client, parent, tmp_path, capsys, *extra):
    uri = client.tracking_uri
    code = compare.main([parent, "--tracking-uri", uri, "--out", str(tmp_path / "out"), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_two_by_three_sweep_has_two_groups_of_three_marks_the_better_mean_and_logs_a_sweep_plot(
        client, tmp_path, capsys):
    parent, children = sweep(client, tmp_path, LR_SEED)
    code, out, _ = run_compare(client, parent, tmp_path, capsys)
    assert code == 0
    assert "6 runs in 2 groups (runs that differ only in seed)" in out
    rows = [line for line in out.splitlines() if line.strip().startswith(("*", "0.0"))]
    best_row = next(line for line in out.splitlines() if line.startswith("*"))
    assert "0.001" in best_row and " 3 " in best_row
    assert "0.1570 ± 0.0020 [0.1550–0.1590]" in best_row  # mean ± std [min-max] of the ranking metric
    other = next(line for line in out.splitlines() if line.lstrip().startswith("0.01 "))
    assert "0.1940 ± 0.0547" in other and not other.startswith("*")
    assert len(rows) >= 2
    assert "Best group: learning_rate=0.001 (n=3), mean best-epoch val_loss 0.1570 ± 0.0020" in out
    assert f"Best single run: {children[3][:8]} (learning_rate=0.01 seed=1), val_loss 0.1308" in out

    logged = {a.path for a in client.list_artifacts(parent, "compare")}
    assert {"compare/compare.png", "compare/sweep.png", "compare/report.md"} <= logged
    assert "compare/parallel.png" not in logged  # two keys swept
    assert (tmp_path / "out" / "sweep.png").read_bytes()[:8] == PNG
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Groups (runs that differ only in seed" in report and "![val_loss against optimizer.learning_rate" in report
    assert all(c in report for c in children)  # the report lists every run


def test_no_group_lists_every_run_and_by_groups_by_another_key(client, tmp_path, capsys):
    parent, children = sweep(client, tmp_path, LR_SEED)
    _, out, _ = run_compare(client, parent, tmp_path, capsys, "--no-group", "--no-log")
    assert "groups" not in out.split("\n\n")[0] and all(c[:8] in out for c in children)
    _, out, _ = run_compare(client, parent, tmp_path, capsys, "--by", "seed", "--no-log")
    assert "6 runs in 3 groups (by seed)" in out


def test_by_a_key_no_run_has_is_refused_naming_the_keys_that_vary(client, tmp_path, capsys):
    parent, _ = sweep(client, tmp_path, LR_SEED)
    code, _, err = run_compare(client, parent, tmp_path, capsys, "--by", "model")
    assert code == 2
    assert ("--by model: no run has that setting. The settings that vary between these runs: "
            "optimizer.learning_rate, seed.") in err


def test_a_diverged_run_is_shown_as_nan_and_left_out_of_its_groups_mean_saying_so(client, tmp_path, capsys):
    points = [*LR_SEED[:3], *LR_SEED[3:5], ({"optimizer.learning_rate": "0.01", "seed": 3}, [math.nan, math.nan])]
    parent, children = sweep(client, tmp_path, points)
    _, out, _ = run_compare(client, parent, tmp_path, capsys, "--no-log")
    row = next(line for line in out.splitlines() if line.lstrip().startswith("0.01 "))
    assert "(2 of 3: 1 nan)" in row  # the mean of the two others, and it says so
    assert "0.1782 ± 0.0670" in row


def test_a_group_whose_runs_all_diverged_is_last_and_shown_as_such(client, tmp_path, capsys):
    points = [*LR_SEED[:3], *[({"optimizer.learning_rate": "0.5", "seed": s}, [math.nan]) for s in (1, 2, 3)]]
    parent, _ = sweep(client, tmp_path, points)
    _, out, _ = run_compare(client, parent, tmp_path, capsys, "--no-log")
    table = out.split("\n\n")[0].splitlines()
    assert table[-1].lstrip().startswith("0.5") and "- (3 nan)" in table[-1]
    assert "Best group: learning_rate=0.001" in out


def test_runs_of_two_datasets_are_grouped_apart_with_a_warning(client, tmp_path, capsys):
    points = [({**p, "dataset.name": "imdb" if n % 2 else "mnist"}, v) for n, (p, v) in enumerate(LR_SEED)]
    experiment = client.create_experiment("mixed", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(experiment).info.run_id
    for n, (p, v) in enumerate(points):
        make_run(client, experiment, parent, p, v, minute=n)
    _, out, _ = run_compare(client, parent, tmp_path, capsys, "--no-log")
    assert out.startswith("warning: these runs are of 2 datasets (imdb, mnist): they are grouped apart")
    assert "in 4 groups" in out  # lr x dataset


def test_a_three_key_sweep_draws_parallel_coordinates(client, tmp_path, capsys):
    points = [({"optimizer.learning_rate": lr, "model.units": units, "seed": seed}, [0.3 + float(lr) + seed / 100])
              for lr in ("0.0001", "0.001", "0.01") for units in (32, 64) for seed in (1, 2)]
    parent, _ = sweep(client, tmp_path, points)
    code, out, _ = run_compare(client, parent, tmp_path, capsys)
    assert code == 0 and "12 runs in 6 groups" in out
    assert (tmp_path / "out" / "parallel.png").read_bytes()[:8] == PNG
    logged = {a.path for a in client.list_artifacts(parent, "compare")}
    assert {"compare/parallel.png", "compare/sweep.png"} <= logged


def test_many_groups_show_the_top_and_count_the_rest(client, tmp_path, capsys):
    points = [({"optimizer.learning_rate": f"{lr / 1000:g}", "seed": s}, [0.5 - lr / 100 + s / 1000])
              for lr in range(1, 13) for s in (1, 2)]
    parent, _ = sweep(client, tmp_path, points)
    _, out, _ = run_compare(client, parent, tmp_path, capsys, "--top", "5", "--no-log")
    assert "... and 7 more groups (all of them in report.md" in out
    report = (tmp_path / "out" / "report.md").read_text()
    group_part = report.split("Groups (")[1].split("Every run:")[0]
    assert group_part.count("\n| ") == 13  # the header and all 12 groups


# ---------------------------------------------------------------------------------------------
# groups.py on plain values


def member(run_id, params, value, finished=True):
    return groups.Member(run_id, params, finished, {} if value is None else {"best val_loss": value})


def test_grouping_leaves_out_seed_and_settings_that_do_not_change_what_is_trained():
    members = [member("a", {"lr": "1", "seed": "1", "data_dir": "/x", "trainer.verbose": "0"}, 0.5),
               member("b", {"lr": "1", "seed": "2", "data_dir": "/y", "trainer.verbose": "2"}, 0.7),
               member("c", {"lr": "2", "seed": "1", "data_dir": "/z"}, 0.2)]
    found = groups.group(members)
    assert [(g.key, [m.run_id for m in g.members]) for g in found] == [((("lr", "1"),), ["a", "b"]),
                                                                      ((("lr", "2"),), ["c"])]
    assert groups.repeated(found)
    stat = found[0].stat("best val_loss")
    assert (stat.n, stat.mean, stat.min, stat.max) == (2, 0.6, 0.5, 0.7)
    assert stat.std == pytest.approx(math.sqrt(0.02))
    assert groups.ranked(found, "best val_loss", "val_loss")[0] is found[1]


def test_stat_says_what_it_left_out():
    g = groups.Group((), [member("a", {}, 0.5), member("b", {}, math.nan), member("c", {}, None),
                          member("d", {}, 0.1, finished=False)])
    stat = g.stat("best val_loss")
    assert stat.values == [0.5] and stat.left_out == {"b": "nan", "c": "missing", "d": "not finished"}
    assert stat.text() == "0.5000 (1 of 4: 1 missing, 1 nan, 1 not finished)"
    assert groups.Group((), []).stat("x").text() == "-"
    assert groups.Stat([0.1, 0.3], {}).text(spread=True) == "0.2000 ± 0.1414 [0.1000–0.3000]"


def test_by_a_group_of_settings_takes_those_that_vary():
    members = [member("a", {"model.name": "dense", "model.units": "64"}, 0.1),
               member("b", {"model.name": "dense", "model.units": "128"}, 0.2)]
    assert groups.by_keys(members, "model") == ["model.units"]
    assert groups.by_keys(members, "model.name") == ["model.name"]
    with pytest.raises(groups.UnknownKey, match="vary between these runs: model.units"):
        groups.by_keys(members, "optimizer")


def test_best_member_is_the_best_finished_finite_run():
    members = [member("a", {}, 0.3), member("b", {}, 0.1, finished=False), member("c", {}, math.nan),
               member("d", {}, 0.2)]
    assert groups.best_member(members, "best val_loss", "val_loss").run_id == "d"
    assert groups.best_member(members, "best val_loss", "val_accuracy").run_id == "a"
    assert groups.best_member(members[1:3], "best val_loss", "val_loss") is None
