"""python -m src.compare: finding runs, the table, the plot and report, logging to a sweep's parent.

The first tests train real runs; the rest build runs directly in a SQLite store with MlflowClient (no training).
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.entities import Metric, Param, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sqlite_store import empty_store
from src import compare
from src.tracking.store import search_runs

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


def test_unknown_target_is_a_clear_error(db, capsys):
    MlflowClient(db).create_experiment("an-existing-experiment")
    assert compare.main(["no-such-experiment", "--tracking-uri", db]) == 2
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


# ---------------------------------------------------------------------------------------------
# Runs built directly in the store (no training): finding them, reading them back, the CLI end to end

T0 = 1_700_000_000_000  # a start time in ms; runs below start minutes apart from it
NAME = "mnist_activation"  # the experiment of the tests below (each has a store of its own)

@pytest.fixture
def db(tmp_path) -> str:
    """A SQLite store of this test's own, empty but for MLflow's "Default" experiment: its URI."""
    return empty_store(tmp_path, current=False)


@pytest.fixture
def client(db) -> MlflowClient:
    return MlflowClient(db)


@pytest.fixture
def new_experiment(client, tmp_path):
    """Makes experiments named NAME + a suffix (artifacts under tmp_path); returns their ids."""
    made = []

    def make(suffix: str = "") -> str:
        name = f"{NAME}{suffix}"
        made.append(client.create_experiment(name, artifact_location=(tmp_path / f"artifacts{len(made)}").as_uri()))
        return made[-1]

    return make


def make_run(client, experiment_id, *, name=None, minute=0, params=None, history=None, test=None, end_s=90.0,
             status="FINISHED", parent=None, failure=None) -> str:
    """A run as training leaves it: params, one metric value per epoch (steps 0..n-1), test metrics, an end.

    It starts `minute` minutes after T0 and ends `end_s` seconds later (None: still RUNNING). Each history is
    logged last epoch first, so reading it back in epoch order needs the steps.
    """
    tags = {compare.PARENT_TAG: parent} if parent else {}
    if failure:
        tags["failure_reason"] = failure
    run_id = client.create_run(experiment_id, start_time=T0 + minute * 60_000, tags=tags, run_name=name).info.run_id
    metrics = [
        Metric(key, value, T0 + i, step)
        for key, values in (history or {}).items()
        for i, (step, value) in enumerate(reversed(list(enumerate(values))))
    ]
    metrics += [Metric(key, value, T0, 0) for key, value in (test or {}).items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in (params or {}).items()])
    if end_s is not None:
        client.set_terminated(run_id, status, end_time=T0 + minute * 60_000 + int(end_s * 1000))
    return run_id


def ids(runs) -> list[str]:
    return [r.info.run_id for r in runs]


def test_experiment_name_gives_its_runs_by_start_time_without_sweep_parents(client, new_experiment):
    """An experiment stands for its runs, oldest first, minus sweep parents (no epochs); --last keeps the newest."""
    exp = new_experiment()
    later = make_run(client, exp, minute=5)
    parent = make_run(client, exp, minute=1)
    child = make_run(client, exp, minute=2, parent=parent)
    first = make_run(client, exp, minute=0)
    deleted = make_run(client, exp, minute=3)
    client.delete_run(deleted)

    assert ids(compare.resolve(client, [NAME])) == [first, child, later]
    assert ids(compare.resolve(client, [NAME], last=2)) == [child, later]
    assert ids(compare.resolve(client, [NAME], last=1)) == [later]


def test_parent_run_id_gives_its_children_and_a_plain_run_id_itself(client, new_experiment):
    """A sweep's parent id stands for its children (oldest first, --last N newest); any other id for its run."""
    exp, elsewhere = new_experiment(), new_experiment("-other")
    parent = make_run(client, exp, minute=0)
    children = [make_run(client, exp, minute=m, parent=parent) for m in (3, 1, 2)]
    make_run(client, elsewhere, minute=4, parent=parent)  # a parent's children live in its experiment
    single = make_run(client, elsewhere, minute=5)

    assert ids(compare.resolve(client, [parent])) == [children[1], children[2], children[0]]
    assert ids(compare.resolve(client, [parent], last=2)) == [children[2], children[0]]
    assert ids(compare.resolve(client, [single])) == [single]
    assert ids(compare.resolve(client, [single], last=1)) == [single]


def test_a_run_id_prefix_of_six_or_more_characters_names_its_run(client, new_experiment):
    """The 8-character ids that the tables print are taken wherever a run id is, a parent's standing for its
    children; fewer than 6 characters are an experiment's name, not a prefix."""
    exp = new_experiment()
    parent = make_run(client, exp, minute=0)
    children = [make_run(client, exp, minute=m, parent=parent) for m in (1, 2)]
    assert ids(compare.resolve(client, [parent[:8]])) == children
    assert ids(compare.resolve(client, [children[0][:6]])) == [children[0]]
    with pytest.raises(compare.CompareError, match="neither a run id nor an experiment"):
        compare.resolve(client, [children[0][:5]])


def test_an_ambiguous_run_id_prefix_is_refused_listing_the_runs_it_matches(client, new_experiment, db):
    """Two runs whose ids share their first 7 characters (rewritten so in the real SQLite store): the 7-character
    prefix is refused naming both; one character more names one."""
    import sqlite3

    exp = new_experiment()
    first, second = make_run(client, exp, minute=0), make_run(client, exp, minute=1)
    renamed = {first: "abcdef0" + first[7:], second: "abcdef0" + second[7:]}
    with sqlite3.connect(db.removeprefix("sqlite:///")) as connection:
        tables = [row[0] for row in connection.execute("select name from sqlite_master where type='table'")]
        for old, new in renamed.items():
            for table in tables:
                columns = [row[1] for row in connection.execute(f"pragma table_info({table})")]
                if "run_uuid" in columns:
                    connection.execute(f"update {table} set run_uuid = ? where run_uuid = ?", (new, old))
    first, second = renamed[first], renamed[second]
    with pytest.raises(compare.CompareError) as err:
        compare.resolve(client, ["abcdef0"])
    assert "'abcdef0' matches 2 runs" in str(err.value) and first in str(err.value) and second in str(err.value)
    assert "Fix: give more characters" in str(err.value)
    assert ids(compare.resolve(client, [first[:9] if first[7:9] != second[7:9] else first])) == [first]


def test_several_targets_are_joined_in_order_without_duplicates(client, new_experiment):
    """Targets add up in the order given; a run named twice (by id and by its experiment) is listed once."""
    exp = new_experiment()
    a, b = make_run(client, exp, minute=0), make_run(client, exp, minute=1)
    other = make_run(client, new_experiment("-2"), minute=2)

    assert ids(compare.resolve(client, [other, b, NAME])) == [other, b, a]


def test_targets_without_runs_are_a_clear_error(client, new_experiment):
    """An experiment with no (active) runs, or only a deleted one, is an error naming the targets."""
    exp = new_experiment()
    client.delete_run(make_run(client, exp))
    with pytest.raises(compare.CompareError) as err:
        compare.resolve(client, [NAME, NAME])
    assert str(err.value) == f"no runs found for {NAME} {NAME}."


def test_unknown_target_lists_the_stores_experiments(client, new_experiment):
    """A name that is no experiment (or an id that is no run) lists every experiment, deleted ones too, sorted."""
    new_experiment("-b")
    client.delete_experiment(new_experiment("-a"))
    with pytest.raises(compare.CompareError) as err:
        compare.resolve(client, ["0" * 32])  # looks like a run id, names no run: looked up as an experiment name
    message = str(err.value)
    assert message.startswith(f"'{'0' * 32}' is neither a run id nor an experiment in this store.\n")
    listed = message.split("Experiments here: ")[1].split(".\n")[0].split(", ")
    assert f"{NAME}-a" in listed and f"{NAME}-b" in listed and listed == sorted(listed)
    assert message.endswith(
        "Fix: pass an experiment name, a sweep's parent run id or run ids (see the MLflow UI or "
        "`mlflow runs list --experiment-id ID`), or --tracking-uri for another store."
    )


class EmptyStore:
    """A store with no experiment at all (a real one always has "Default")."""

    def get_experiment_by_name(self, name):
        return None

    def search_experiments(self, view_type):
        return []


def test_unknown_target_in_an_empty_store_says_none():
    """The list of experiments is never blank: "(none)" says the store has none."""
    with pytest.raises(compare.CompareError, match=r"\nExperiments here: \(none\)\.\n"):
        compare.resolve(EmptyStore(), ["mnist"])


class PagedStore:
    """search_runs (MlflowClient's signature) answering in pages of two, as a store does beyond max_results."""

    def __init__(self, runs):
        self.runs, self.calls = runs, []

    def search_runs(self, experiment_ids, filter_string="", run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                    order_by=None, page_token=None):
        self.calls.append(page_token)
        assert len(self.calls) <= len(self.runs), "the same pages are asked for again and again"
        start = int(page_token or 0)
        return PagedList(self.runs[start : start + 2], str(start + 2) if start + 2 < len(self.runs) else None)


class PagedList(list):
    def __init__(self, items, token):
        super().__init__(items)
        self.token = token


def test_search_follows_page_tokens_to_the_last_page():
    """More runs than one page holds: every page is read, in order, each once."""
    paged = PagedStore(list(range(5)))
    assert search_runs(paged, ["1"], "") == [0, 1, 2, 3, 4]
    assert paged.calls == [None, "2", "4"]


def test_summary_reads_epochs_in_order_tests_wall_time_parent_and_failure(client, new_experiment):
    """A run's summary: each history in epoch order (by step), test metrics, wall seconds, parent, failure."""
    exp = new_experiment()
    parent = make_run(client, exp)
    history = {"loss": [0.9, 0.5, 0.4], "val_loss": [1.0, 0.6, 0.7], "accuracy": [0.5, 0.7, 0.8],
               "val_accuracy": [0.4, 0.6, 0.65], "lr": [0.1, 0.1, 0.01]}
    run_id = make_run(client, exp, name="relu-run", params={"model.activation": "relu"}, history=history,
                      test={"test_accuracy": 0.61, "test_loss": 0.72}, end_s=90.0, status="FAILED", parent=parent,
                      failure="NaN loss")

    s = compare.summarise(client, client.get_run(run_id))
    assert (s.run_id, s.name, s.experiment, s.status) == (run_id, "relu-run", exp, "FAILED")
    assert s.params == {"model.activation": "relu"}
    assert s.history == {k: v for k, v in history.items() if k != "lr"}  # only what the table and plot show
    assert s.test == {"test_accuracy": 0.61, "test_loss": 0.72}
    assert s.wall_s == 90.0 and s.epochs == 3
    assert (s.parent, s.failure) == (parent, "NaN loss")


def test_summary_of_a_running_run_without_metrics(client, new_experiment):
    """A run still RUNNING has no wall time; one without metrics or tags has empty parts and no parent."""
    run_id = make_run(client, new_experiment(), name="live", end_s=None)
    s = compare.summarise(client, client.get_run(run_id))
    assert (s.status, s.wall_s, s.history, s.test, s.epochs) == ("RUNNING", None, {}, {}, 0)
    assert (s.parent, s.failure) == (None, None)


def test_summary_of_a_run_without_a_name_uses_its_short_id():
    """Stores that keep no run name (older MLflow): the name is the run id's first 8 characters."""
    info = SimpleNamespace(run_id="0123456789abcdef" * 2, run_name=None, experiment_id="1", status="FINISHED",
                           start_time=None, end_time=T0)
    s = compare.summarise(None, SimpleNamespace(info=info, data=SimpleNamespace(metrics={}, params={}, tags={})))
    assert (s.name, s.wall_s) == ("01234567", None)


# ---------------------------------------------------------------------------------------------
# The table, its labels and the report (pure functions of run summaries)


def summary(run_id="a" * 32, name="run", params=None, history=None, test=None, wall_s=None, status="FINISHED",
            failure=None) -> compare.RunSummary:
    return compare.RunSummary(run_id=run_id, name=name, experiment="1", status=status, params=params or {},
                              history=history or {}, test=test or {}, wall_s=wall_s, failure=failure)


def test_differing_params_are_sorted_and_skip_the_store_and_data_paths():
    """Only params whose values differ (a missing one differs too), sorted; paths that always differ are left out."""
    common = {"tracking.tracking_uri": "x", "data_dir": "/a", "seed": "1"}
    runs = [
        summary(params={**common, "model.activation": "relu", "optimizer.name": "adam", "lr": "0.1"}),
        summary(params={"tracking.tracking_uri": "y", "data_dir": "/b", "seed": "1",
                        "model.activation": "tanh", "optimizer.name": "adam"}),
    ]
    assert compare.differing_params(runs) == ["lr", "model.activation"]
    assert compare.differing_params(runs[:1]) == []  # one run: nothing differs


@pytest.mark.parametrize(
    "key, short",
    [("model.activation", "activation"), ("optimizer.name", "optimizer"), ("a.b.name", "a.b"),
     ("name", "name"), ("seed", "seed"), ("model.units.1", "1")],
)
def test_short_key_is_the_leaf_or_the_groups_choice(key, short):
    assert compare._short(key) == short


def test_labels_name_runs_by_differing_values_else_by_name():
    """Plot labels: the differing values (short keys, '-' where missing); run ids added when they tie."""
    a = summary("a" * 32, "first", {"model.activation": "relu", "optimizer.name": "adam"})
    b = summary("b" * 32, "second", {"model.activation": "tanh"})
    c = summary("c" * 32, "third", {"model.activation": "relu", "optimizer.name": "adam"})
    keys = ["model.activation", "optimizer.name"]
    assert compare.labels([a, b], keys) == ["activation=relu optimizer=adam", "activation=tanh optimizer=-"]
    assert compare.labels([a, b, c], keys) == [
        "activation=relu optimizer=adam (aaaaaaaa)", "activation=tanh optimizer=- (bbbbbbbb)",
        "activation=relu optimizer=adam (cccccccc)",
    ]
    assert compare.labels([a, c], []) == ["first (aaaaaaaa)", "third (cccccccc)"]


@pytest.mark.parametrize(
    "values, monitor, best",
    [
        ([0.5, 0.3, 0.4], "val_loss", (0.3, 2)),
        ([0.5, 0.3, 0.4], "val_accuracy", (0.5, 1)),
        ([0.3, 0.3], "val_loss", (0.3, 1)),  # a tie: the first epoch that reached it (as Keras's EarlyStopping)
        ([0.8, 0.9, 0.9], "val_accuracy", (0.9, 2)),
        ([float("nan"), 0.9, float("inf"), 0.2], "val_loss", (0.2, 4)),  # epochs count the skipped ones
        ([float("nan"), float("-inf")], "val_accuracy", None),
        ([], "val_loss", None),
    ],
)
def test_best_is_the_lowest_loss_or_highest_accuracy_with_its_epoch(values, monitor, best):
    assert compare._best(values, monitor) == best


@pytest.mark.parametrize(
    "value, digits, text",
    [(None, 4, "-"), (0.123456, 4, "0.1235"), (12.345, 1, "12.3"), (float("nan"), 4, "nan"),
     (float("inf"), 1, "inf"), (3, 4, "3"), ("RUNNING", 4, "RUNNING")],
)
def test_cells_round_floats_and_show_missing_as_a_dash(value, digits, text):
    assert compare._fmt(value, digits) == text


def test_fmt_rounds_to_four_digits_by_default():
    """Metric cells have four decimals unless told otherwise (wall s has one)."""
    assert compare._fmt(0.98765) == "0.9877"


HEADER_END = ["status", "epochs", "best val_loss (ep)", "final val_loss", "best val_acc (ep)", "final val_acc",
              "test_acc", "test_loss", "wall s"]


def test_table_shows_differing_values_best_and_final_metrics_tests_and_wall_time():
    """One row per run: differing values, status, epochs, best (with epoch) and final validation metrics, tests."""
    relu = summary("1" * 32, params={"model.activation": "relu", "seed": "1"}, wall_s=35.64,
                   history={"loss": [0.9, 0.5, 0.45], "val_loss": [0.8, 0.3, 0.35], "val_accuracy": [0.7, 0.95, 0.9]},
                   test={"test_accuracy": 0.91234, "test_loss": 0.33333})
    tanh = summary("2" * 32, params={"seed": "1"}, status="FAILED", history={"loss": [float("nan")],
                   "val_loss": [float("nan")], "val_accuracy": [0.1]})

    header, rows = compare.table([relu, tanh])
    assert header == ["run", "model.activation", *HEADER_END]
    assert rows == [
        ["11111111", "relu", "FINISHED", "3", "0.3000 (2)", "0.3500", "0.9500 (2)", "0.9000", "0.9123", "0.3333",
         "35.6"],
        ["22222222", "-", "FAILED", "1", "-", "nan", "0.1000 (1)", "0.1000", "-", "-", "-"],
    ]


def test_table_of_runs_without_epochs_is_dashes():
    """A run that died before its first epoch: no best, no final value, 0 epochs."""
    header, rows = compare.table([summary("3" * 32, status="RUNNING")])
    assert header == ["run", *HEADER_END]
    assert rows == [["33333333", "RUNNING", "0", "-", "-", "-", "-", "-", "-", "-"]]


def test_report_has_the_table_command_store_plot_and_runs():
    """report.md: title, the command and store it came from, the Markdown table, the plot, and each run's status."""
    runs = [summary("1" * 32, "ok"), summary("2" * 32, "bad", status="FAILED", failure="NaN loss at epoch 2")]
    header, rows = compare.table(runs)
    text = compare.report("Comparison of x", "python -m src.compare x", "sqlite:///s.db", runs, header, rows, "c.png")

    lines = text.splitlines()
    assert lines[0] == "# Comparison of x"
    assert re.fullmatch(r"Made by `python -m src\.compare x` on \d{4}-\d\d-\d\d \d\d:\d\d UTC from `sqlite:///s\.db`\.",
                        lines[2])
    assert "\n\n| run | status | epochs | best val_loss (ep) |" in text and "| 11111111 | FINISHED |" in text
    assert (
        "\n\nbest = lowest val_loss / highest val_accuracy, with its epoch (counted from 1); wall s = the MLflow run's "
        "start to end (building, training, testing, logging; the data is loaded before the run starts).\n\n"
    ) in text
    assert "\n\n![validation loss and accuracy per epoch](c.png)\n\n" in text
    assert text.endswith(f"Runs:\n\n- `{'1' * 32}` ok (FINISHED)\n- `{'2' * 32}` bad (FAILED: NaN loss at epoch 2)\n")


# ---------------------------------------------------------------------------------------------
# Output folder names


@pytest.mark.parametrize(
    "targets, slug",
    [
        (["mnist_lr"], "mnist_lr"),
        (["Xception.v2"], "Xception.v2"),  # dots and letters inside a name stay
        (["mnist_lr", "imdb.v2-x"], "mnist_lr_imdb.v2-x"),  # targets joined by "_"
        (["0123456789abcdef" * 2, "fedcba9876543210" * 2], "01234567_fedcba98"),  # run ids: their short form
    ],
)
def test_plain_targets_name_their_folder_as_they_are(targets, slug):
    assert compare._slug(targets) == slug


@pytest.mark.parametrize(
    "targets, kept",
    [
        (["a b/c"], "a-b-c"),  # each run of other characters becomes one dash
        ([".hidden."], "hidden"),  # no leading or trailing dot ("..", ".git")
        (["x" * 100], "x" * 71),  # long names are cut to fit 80 characters with the hash
        (["y" * 80 + "z"], "y" * 71),
    ],
)
def test_changed_targets_get_a_hash_of_the_full_text(targets, kept):
    """A name that had to change ends in "-" and 8 hex digits of the original, so it cannot meet another's."""
    slug = compare._slug(targets)
    text = "_".join(targets)
    assert slug == f"{kept}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    assert len(slug) <= 80


# ---------------------------------------------------------------------------------------------
# The command line on runs built in the store


@pytest.fixture
def sweep(client, new_experiment):
    """A sweep's parent and its relu and tanh children (2 epochs each, 90 s and 45.5 s): (parent, relu, tanh)."""
    exp = new_experiment()
    parent = make_run(client, exp, name="sweep", minute=0)
    common = {"seed": "42", "data_dir": "/data", "optimizer.name": "adam"}
    relu = make_run(client, exp, name="r", minute=1, parent=parent, params={**common, "model.activation": "relu"},
                    history={"loss": [0.8, 0.4], "val_loss": [0.5, 0.25], "accuracy": [0.7, 0.9],
                             "val_accuracy": [0.8, 0.875]},
                    test={"test_accuracy": 0.87, "test_loss": 0.26}, end_s=90.0)
    tanh = make_run(client, exp, name="t", minute=2, parent=parent, params={**common, "model.activation": "tanh"},
                    history={"loss": [0.9, 0.6], "val_loss": [0.5, 0.75], "accuracy": [0.6, 0.7],
                             "val_accuracy": [0.625, 0.5]}, end_s=45.5, status="FAILED", failure="stopped")
    return parent, relu, tanh


@pytest.fixture
def unusable_default_store(monkeypatch):
    """The process's default store (MLflow's current URI, $MLFLOW_TRACKING_URI) is one that cannot be opened."""
    unusable, previous = "file:///nonexistent/mlruns", mlflow.get_tracking_uri()  # MLflow 3 refuses file stores
    monkeypatch.setenv("MLFLOW_TRACKING_URI", unusable)
    mlflow.set_tracking_uri(unusable)
    yield unusable
    mlflow.set_tracking_uri(previous)


def test_cli_prints_the_table_writes_plot_and_report_and_logs_them_to_the_sweeps_parent(
    sweep, client, db, tmp_path, capsys, monkeypatch, unusable_default_store
):
    """The README's example in miniature: printed table and file paths, compare.png and report.md, logged to the
    sweep's parent under compare/; the plot gets one line per run, labelled by what differs. --tracking-uri
    names the store, whatever the process's default."""
    parent, relu, tanh = sweep
    plotted = []
    real_plot = compare.plots.compare
    monkeypatch.setattr(compare.plots, "compare", lambda h, path, title: plotted.append((h, path, title))
                        or real_plot(h, path, title=title))
    out = tmp_path / "cmp"

    assert compare.main([NAME, "--tracking-uri", db, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == (
        "run       model.activation  status    epochs  best val_loss (ep)  final val_loss  best val_acc (ep)"
        "  final val_acc  test_acc  test_loss  wall s\n"
        "--------  ----------------  --------  ------  ------------------  --------------  -----------------"
        "  -------------  --------  ---------  ------\n"
        f"{relu[:8]}  relu              FINISHED  2       0.2500 (2)          0.2500          0.8750 (2)"
        "         0.8750         0.8700    0.2600     90.0\n"
        f"{tanh[:8]}  tanh              FAILED    2       0.5000 (1)          0.7500          0.6250 (1)"
        "         0.5000         -         -          45.5\n"
        f"\nBest run: {relu[:8]} (activation=relu), val_loss 0.2500 at epoch 2 (lowest best-epoch val_loss, the value "
        f"src.train returns to sweepers); run id {relu}\n"
        f"\nplot:   {out / 'compare.png'}\nreport: {out / 'report.md'}\n"
        f"logged compare/compare.png and compare/report.md to the parent run {parent}\n"
    )
    assert (out / "compare.png").read_bytes()[:8] == PNG
    report = (out / "report.md").read_text()
    assert report.startswith(f"# Comparison of {NAME}\n\nMade by `python -m src.compare {NAME} "
                             f"--tracking-uri {db} --out {out}` on ")
    assert f"| {relu[:8]} | relu | FINISHED | 2 | 0.2500 (2) |" in report and "(compare.png)" in report
    assert f"- `{tanh}` t (FAILED: stopped)" in report

    [(histories, path, title)] = plotted
    assert path == out / "compare.png" and title == f"Comparison of {NAME}"
    assert list(histories) == ["activation=relu", "activation=tanh"]
    assert histories["activation=tanh"]["val_loss"] == [0.5, 0.75]

    logged = client.list_artifacts(parent, "compare")
    assert sorted(a.path for a in logged) == ["compare/compare.png", "compare/report.md"]
    assert all(a.file_size > 0 for a in logged)


def test_no_log_keeps_the_parent_untouched(sweep, client, db, tmp_path, capsys):
    """--no-log: the files are written, nothing is logged to the sweep's parent."""
    parent, relu, tanh = sweep
    assert compare.main([parent, "--no-log", "--tracking-uri", db, "--out", str(tmp_path)]) == 0
    assert "parent run" not in capsys.readouterr().out
    assert (tmp_path / "report.md").is_file() and client.list_artifacts(parent) == []


def test_runs_of_different_parents_or_none_log_nowhere(sweep, client, new_experiment, db, tmp_path, capsys):
    """Only runs that all share one parent are a sweep; a mix (or no parent) leaves every run untouched."""
    parent, relu, tanh = sweep
    other_parent = make_run(client, new_experiment("-2"))
    lone = make_run(client, new_experiment("-3"))
    other_child = make_run(client, new_experiment("-4"), parent=other_parent)
    for targets in ([relu, lone], [lone, relu], [relu, other_child], [lone]):
        assert compare.main([*targets, "--tracking-uri", db, "--out", str(tmp_path)]) == 0
        assert "parent run" not in capsys.readouterr().out
        assert (tmp_path / "report.md").read_text().startswith(f"# Comparison of {' '.join(targets)}\n")
    assert client.list_artifacts(parent) == [] and client.list_artifacts(other_parent) == []


def test_report_time_is_utc_whatever_the_machines_time_zone(monkeypatch):
    """The report says UTC, so its time is UTC on a machine set to another zone too."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30 all year: no local time ever reads as UTC
    time.tzset()
    try:
        text = compare.report("t", "c", "u", [], ["run"], [], "p.png")
        now = datetime.now(timezone.utc)
    finally:
        monkeypatch.undo()
        time.tzset()
    stamp = datetime.strptime(text.split(" on ")[1][:16], "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)
    assert abs((now - stamp).total_seconds()) < 120


def test_default_store_and_output_folder(sweep, db, tmp_path, monkeypatch, capsys):
    """No --tracking-uri: $MLFLOW_TRACKING_URI; no --out: outputs/compare/<targets> under the project;
    the report quotes the command as typed."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    monkeypatch.setattr(compare, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["src/compare.py", NAME, "--last", "1"])
    assert compare.main() == 0
    out = tmp_path / "outputs" / "compare" / compare._slug([NAME])
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert f"Made by `python -m src.compare {NAME} --last 1` on " in report and f"from `{db}`" in report
    assert (out / "compare.png").read_bytes()[:8] == PNG


def test_a_run_left_running_by_a_dead_process_is_shown_failed(client, new_experiment, db, tmp_path,
                                                              capsys):
    """compare ends a RUNNING run whose owner is gone (no heartbeat for long) before it reads it."""
    run_id = make_run(client, new_experiment(), end_s=None)  # started in 2023, nothing heard since
    assert compare.main([NAME, "--tracking-uri", db, "--out", str(tmp_path)]) == 0
    assert rows_of(capsys.readouterr().out)[run_id[:8]].split()[1] == "FAILED"
    assert client.get_run(run_id).info.status == "FAILED"


def test_a_store_refusing_the_query_is_a_clear_error(db, monkeypatch, capsys):
    """An MLflow error while reading (a locked database, a server saying no) is one line on stderr, exit 2."""
    def refuse(client):
        raise MlflowException("database is locked")

    monkeypatch.setattr(compare.liveness, "reconcile", refuse)
    assert compare.main(["x", "--tracking-uri", db]) == 2
    assert capsys.readouterr().err == f"error: the tracking store {db} refused the query: database is locked\n"


@pytest.mark.parametrize("last", ["0", "-2"])
def test_last_must_be_positive(last, capsys):
    """--last 0 or less would mean no runs (or all of them): refused by the argument parser."""
    with pytest.raises(SystemExit) as exit_:
        compare.main(["x", "--last", last])
    assert exit_.value.code == 2
    assert f"error: --last {last}: must be >= 1" in capsys.readouterr().err


def test_last_one_is_accepted(sweep, db, tmp_path, capsys):
    """--last 1 is the smallest useful value: the most recent run only."""
    parent, relu, tanh = sweep
    assert compare.main([NAME, "--last", "1", "--tracking-uri", db, "--out", str(tmp_path)]) == 0
    assert set(rows_of(capsys.readouterr().out)) == {tanh[:8]}


def test_help_explains_every_option(capsys, monkeypatch):
    """--help: the module's first paragraph, then each option with its default."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")  # the fallback is named, not the variable
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width
    assert text.startswith("usage: python -m src.compare [-h] [--tracking-uri TRACKING_URI] [--last LAST] "
                           "[--out OUT] [--no-log] [--by KEY] [--no-group] [--top N] targets [targets ...] ")
    for part in [
        "Compare runs from the MLflow store in a terminal: a table, an overlaid plot, a Markdown report.",
        "targets an experiment name, a sweep's parent run id, or run ids",
        "--tracking-uri TRACKING_URI default: $MLFLOW_TRACKING_URI, else "
        f"sqlite:///{compare.PROJECT_ROOT / 'mlruns' / 'mlflow.db'}",
        "--last LAST only the N most recent runs of each experiment/sweep",
        "--out OUT folder for compare.png and report.md (default: outputs/compare/<targets>)",
        "--no-log do not log the plot and report to the parent run",
        "--by KEY group the runs by this setting",
        "--no-group list every run, seeds not aggregated",
        "--top N rows of the terminal's table",
    ]:
        assert part in text
    assert "Needs no browser" not in text  # only the docstring's first paragraph
