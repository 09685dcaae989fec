"""The outbox observed while it works: the order of every call a store receives, not only the end state.

Fake clients record calls (and fail or stall on purpose) where the order is under test; importing
a pending file runs the real command against a real SQLite store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from conftest import ROOT, child_env
from src.tracking import inputs, outbox


class Down(Exception):
    """What a store that does not answer raises."""


class FakeClient:
    """Records every call that succeeded, in order; `fail` says which call numbers (from 1) raise."""

    def __init__(self, fail=lambda n: False, delay: float = 0.0, uri: str = "http://fake:5000"):
        self.tracking_uri = uri
        self.fail, self.delay = fail, delay
        self.calls = 0
        self.sent: list[tuple] = []  # (op, run_id, what)
        self.lock = threading.Lock()

    def _call(self, entry: tuple) -> None:
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)
        if self.fail(n):
            raise Down(f"call {n} refused")
        self.sent.append(entry)

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if metrics:
            self._call(("metrics", run_id, tuple((m.key, m.step) for m in metrics)))
        if tags:
            self._call(("tags", run_id, tuple((t.key, t.value) for t in tags)))

    def log_artifacts(self, run_id, local_dir, artifact_path=None):
        self._call(("artifacts", run_id, (artifact_path, tuple(sorted(p.name for p in Path(local_dir).iterdir())))))

    def log_inputs(self, run_id, datasets=None):
        self._call(("inputs", run_id, tuple((d.dataset.name, d.dataset.digest, tuple((t.key, t.value) for t in d.tags))
                                            for d in datasets)))

    def set_terminated(self, run_id, status=None):
        self._call(("end", run_id, status))


def metric(step: int, key: str = "loss") -> list[Metric]:
    return [Metric(key, float(step), 1000 + step, step)]


def first_success_order(sent: list[tuple]) -> list[tuple]:
    seen = []
    for entry in sent:
        if entry not in seen:
            seen.append(entry)
    return seen


def test_backlog_is_replayed_in_order_before_the_next_record(tmp_path, caplog):
    """Down for the first 3 calls: records 1-3 are kept; record 4 first sends 1, 2, 3, then itself."""
    caplog.set_level("INFO", logger="src.tracking.outbox")
    client = FakeClient(fail=lambda n: n <= 3)
    box = outbox.Outbox(tmp_path / outbox.FILENAME, client)
    for step in (1, 2, 3):
        box.log_metrics("r", metric(step))
    assert client.sent == []
    assert [json.loads(line)["metrics"][0][3] for line in box.path.read_text().splitlines()] == [1, 2, 3]
    box.log_metrics("r", metric(4))
    assert client.sent == [("metrics", "r", (("loss", s),)) for s in (1, 2, 3, 4)]
    assert not box.path.exists()  # the backlog is gone once sent
    # what the user reads: where the records are and the command that imports them; that they went through
    messages = [r.getMessage() for r in caplog.records]
    assert f"Kept it in {box.path}; when the store answers again: python -m src.outbox import {box.path}" in messages
    assert messages[-1] == f"MLflow store http://fake:5000 answers again: sent the records kept in {box.path}"


def test_a_new_record_waits_while_the_backlog_cannot_be_sent(tmp_path):
    """The store takes one call and refuses the next (the backlog's 2nd record): the new record must be
    kept behind the backlog, not sent ahead of it; once the store is back, everything arrives in order."""
    refused = {1, 2, 4}  # records 1 and 2 kept; replay: 1 goes through (call 3), 2 fails (call 4)
    client = FakeClient(fail=lambda n: n in refused)
    box = outbox.Outbox(tmp_path / outbox.FILENAME, client)
    box.log_metrics("r", metric(1))
    box.log_metrics("r", metric(2))
    box.set_tag("r", "note", "three")  # arrives while record 2 of the backlog still fails
    assert [e[0] for e in client.sent] == ["metrics"]  # only record 1, through the replay
    assert ("tags", "r", (("note", "three"),)) not in client.sent
    assert [json.loads(line)["op"] for line in box.path.read_text().splitlines()] == ["metrics", "metrics", "tags"]

    box.end("r", "FINISHED")
    expected = [("metrics", "r", (("loss", 1),)), ("metrics", "r", (("loss", 2),)),
                ("tags", "r", (("note", "three"),)), ("end", "r", "FINISHED")]
    assert first_success_order(client.sent) == expected
    assert client.sent[-1] == ("end", "r", "FINISHED") and client.sent.count(expected[-1]) == 1
    assert not box.path.exists()


def test_artifacts_that_fail_are_kept_as_a_copy_and_sent_in_turn(tmp_path):
    """Sent at once while the store answers; then two uploads fail (calls 2 and 3): each is kept as its own copy,
    with the sub-folder it was meant for."""
    client = FakeClient(fail=lambda n: n in (2, 3))
    box = outbox.Outbox(tmp_path / outbox.FILENAME, client)
    for name, sub in (("first", "model"), ("second", "plots"), ("third", None)):
        temporary = tmp_path / "tmp-artifacts"
        temporary.mkdir()
        (temporary / f"{name}.txt").write_text(name)
        box.log_artifacts("r", temporary, sub)
        shutil.rmtree(temporary)  # the caller's folder is temporary: a kept copy must not depend on it
    assert client.sent == [("artifacts", "r", ("model", ("first.txt",)))]
    copies = sorted((tmp_path / "mlflow-pending-artifacts").iterdir())
    assert [(p.name, [f.name for f in p.iterdir()]) for p in copies] == [("0000", ["second.txt"]), ("0001", ["third.txt"])]
    box.end("r", "FINISHED")
    assert client.sent[1:] == [("artifacts", "r", ("plots", ("second.txt",))), ("artifacts", "r", (None, ("third.txt",))),
                               ("end", "r", "FINISHED")]
    assert not box.path.exists() and not (tmp_path / "mlflow-pending-artifacts").exists()


def test_slow_store_epochs_queue_in_order_and_the_end_waits_for_them(tmp_path):
    """MLflowMetrics hands epochs to a background thread; with a slow store, training does not wait per
    epoch, and an interrupted run's end (runs._end) still reaches the store after every queued epoch."""
    from src.training import callbacks
    from src.tracking import runs

    delay = 0.3
    client = FakeClient(delay=delay)
    box = outbox.Outbox(tmp_path / outbox.FILENAME, client)
    callback = callbacks.MLflowMetrics("r", client=client, outbox=box)
    started = time.monotonic()
    for epoch in range(3):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
    assert time.monotonic() - started < delay * 2  # three slow sends did not hold training up
    # fit interrupted before on_train_end: _end waits for the queue, then tags and ends the run
    runs._end(SimpleNamespace(info=SimpleNamespace(run_id="r")), "KILLED", "interrupted", box)
    ops = [(e[0], e[2]) for e in client.sent]
    # every epoch once, in order (epochs queued behind a slow request go together in the next one), then the end
    assert [m for op, steps in ops if op == "metrics" for m in steps] == [
        m for s in (1, 2, 3) for m in (("loss", s), ("epoch_time_s", s))
    ]
    assert [op for op, _ in ops] == ["metrics"] * (len(ops) - 2) + ["tags", "end"]
    assert len(ops) - 2 <= 2  # epochs 2 and 3 came during the first slow request: one request took both
    assert ops[-2:] == [("tags", (("failure_reason", "interrupted"),)), ("end", "KILLED")]


def refused_always(n: int) -> bool:
    return True


def dataset_inputs(tmp_path: Path) -> list[dict]:
    """One split's input as a run logs it (`inputs.records`), for a small file standing in for mnist.npz."""
    data = tmp_path / "mnist.npz"
    data.write_bytes(b"digits")
    return inputs.records("mnist", data, "ab" * 32, {"train": 5})


def plots_folder(tmp_path: Path) -> Path:
    """A folder of artifacts to upload: one file."""
    folder = tmp_path / "plots-src"
    folder.mkdir()
    (folder / "curve.txt").write_text("loss by epoch")
    return folder


# what each call keeps in the file (beside run_id and tracking_uri): the import reads exactly these fields
KEPT = {
    "metrics": (lambda box, tmp: box.log_metrics("r", [Metric("loss", 0.25, 1_700_000_000_123, 3),
                                                       Metric("acc", 0.75, 1_700_000_000_124, 3)]),
                lambda tmp: {"metrics": [["loss", 0.25, 1_700_000_000_123, 3], ["acc", 0.75, 1_700_000_000_124, 3]]}),
    "tags": (lambda box, tmp: box.set_tag("r", "note", "kept"), lambda tmp: {"tags": {"note": "kept"}}),
    "inputs": (lambda box, tmp: box.log_inputs("r", dataset_inputs(tmp)), lambda tmp: {"inputs": dataset_inputs(tmp)}),
    "artifacts": (lambda box, tmp: box.log_artifacts("r", plots_folder(tmp), "plots"),
                  lambda tmp: {"local_dir": str(tmp / "mlflow-pending-artifacts" / "0000"), "artifact_path": "plots"}),
    "end": (lambda box, tmp: box.end("r", "KILLED"), lambda tmp: {"status": "KILLED"}),
}


@pytest.mark.parametrize("op", KEPT)
def test_a_refused_record_is_kept_whole_and_the_user_is_told(tmp_path, caplog, op):
    """Each kind of record the store refuses becomes one JSON line holding the run, the store it was meant for
    and every field the import needs; the user reads which store refused what, and how to import it later."""
    caplog.set_level("INFO", logger="src.tracking.outbox")
    call, fields = KEPT[op]
    box = outbox.Outbox(tmp_path / outbox.FILENAME, FakeClient(fail=refused_always))
    call(box, tmp_path)
    [line] = box.path.read_text().splitlines()
    assert json.loads(line) == {"run_id": "r", "tracking_uri": "http://fake:5000", "op": op, **fields(tmp_path)}
    assert [r.getMessage() for r in caplog.records] == [
        f"MLflow store http://fake:5000 did not take the run's {op} (Down: call 1 refused)",
        f"Kept it in {box.path}; when the store answers again: python -m src.outbox import {box.path}",
    ]


class Refusing:
    """A store whose every call raises `error`."""

    tracking_uri = "http://fake:5000"

    def __init__(self, error: Exception):
        self.error = error

    def set_terminated(self, run_id, status=None):
        raise self.error


@pytest.mark.parametrize("error, shown", [
    (Down("connection refused"), "connection refused"),
    (Down("HTTP 503\n<html>a whole error page</html>"), "HTTP 503"),  # one line, not a page of HTML
    (Down("x" * 400), "x" * 300),
    (Down(), ""),
])
def test_the_warning_shows_one_short_line_of_the_stores_error(tmp_path, caplog, error, shown):
    """The warning quotes the error's first line, cut at 300 characters, and copes with an error without text."""
    box = outbox.Outbox(tmp_path / outbox.FILENAME, Refusing(error))
    box.end("r", "FINISHED")
    assert caplog.records[0].getMessage() == f"MLflow store http://fake:5000 did not take the run's end (Down: {shown})"
    assert box.path.exists()


# ---------------------------------------------------------------------------------------------
# `python -m src.outbox import FILE`, for real


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> tuple[str, str]:
    """A real SQLite store (its schema takes seconds to create): (uri, experiment id)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    uri = f"sqlite:///{path}"
    template = Path(tempfile.gettempdir()) / f"le5-test-mlflow-blank-{mlflow.__version__}.db"
    if not template.exists():  # migrated once per MLflow version; later stores (and mutmut's runs) copy it
        building = template.with_suffix(f".{os.getpid()}.tmp")
        MlflowClient(f"sqlite:///{building}").search_experiments()
        os.replace(building, template)
    shutil.copy(template, path)
    return uri, MlflowClient(uri).create_experiment("outbox")


@pytest.fixture
def sqlite_run(sqlite_store):
    """A fresh RUNNING run in that store: (uri, run_id)."""
    uri, experiment_id = sqlite_store
    return uri, MlflowClient(uri).create_run(experiment_id).info.run_id


def pending_file(tmp_path: Path, uri: str, run_id: str) -> Path:
    """What a run writes while its store is down: 2 epochs, a tag, its end (the fake refuses every call)."""
    box = outbox.Outbox(tmp_path / "run" / outbox.FILENAME, FakeClient(fail=lambda n: True, uri=uri))
    box.path.parent.mkdir()
    box.log_metrics(run_id, [*metric(1), *metric(1, "val_loss")])
    box.log_metrics(run_id, [*metric(2), *metric(2, "val_loss")])
    box.set_tag(run_id, "note", "from the outbox")
    box.end(run_id, "FINISHED")
    return box.path


@pytest.fixture(params=["subprocess", "in-process"])
def import_file(request, capsys):
    """`python -m src.outbox import FILE`: run literally, and in this process (where mutmut sees what it runs)."""

    def run(path: Path) -> subprocess.CompletedProcess:
        if request.param == "subprocess":
            return subprocess.run([sys.executable, "-m", "src.tracking.outbox", "import", str(path)], cwd=ROOT,
                                  env=child_env(), capture_output=True, text=True, timeout=120)
        capsys.readouterr()
        code = outbox._cli(["import", str(path)])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([], code, out, err)

    return run


def test_importing_the_same_file_twice_adds_nothing_twice(tmp_path, sqlite_run, import_file):
    uri, run_id = sqlite_run
    path = pending_file(tmp_path, uri, run_id)
    backup = tmp_path / "copy.jsonl"
    shutil.copy(path, backup)

    first = import_file(path)
    assert first.returncode == 0, first.stderr
    assert f"imported 4 records into run(s) {run_id} at {uri}" in first.stdout
    assert not path.exists()
    shutil.copy(backup, path)  # the same file again (a second import from a copy, or a retry)
    second = import_file(path)
    assert second.returncode == 0, second.stderr

    client = MlflowClient(uri)
    for key in ("loss", "val_loss"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2]  # each step once
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["note"] == "from the outbox"


def test_a_file_that_fails_mid_import_is_kept(tmp_path, sqlite_run, import_file):
    uri, run_id = sqlite_run
    path = pending_file(tmp_path, uri, run_id)
    lines = path.read_text().splitlines()
    broken = json.loads(lines[1])
    broken["run_id"] = "0" * 32  # no such run: the store refuses the second record
    path.write_text("\n".join([lines[0], json.dumps(broken), *lines[2:]]) + "\n")
    before = path.read_text()

    result = import_file(path)
    assert result.returncode == 1
    assert "not imported" in result.stderr and "the file is kept" in result.stderr
    assert path.read_text() == before  # every record still there, to import once fixed
    assert [m.step for m in MlflowClient(uri).get_metric_history(run_id, "loss")] == [1]  # sent before the failure


def test_the_command_line_takes_only_import_and_says_how_it_is_called(tmp_path, capsys):
    path = tmp_path / outbox.FILENAME
    path.write_text("{}\n")
    with pytest.raises(SystemExit) as refused:  # a misspelled command imports nothing
        outbox._cli(["imprt", str(path)])
    assert refused.value.code == 2 and path.read_text() == "{}\n"
    assert "argument command: invalid choice: 'imprt'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        outbox._cli(["--help"])
    usage = capsys.readouterr().out
    assert usage.startswith("usage: python -m src.outbox [-h]") and "{import}" in usage
    assert "What a run could not send to its tracking store" in usage and "Importing twice" not in usage
    words = " ".join(usage.split())  # argparse wraps the help to the terminal's width
    assert "files mlflow-pending.jsonl files from runs' output folders" in words
    assert "--tracking-uri TRACKING_URI default: the store each record was meant for" in words


@pytest.fixture
def artifact_run(sqlite_store, tmp_path):
    """A fresh run whose artifacts go under tmp_path (not the working directory): (uri, run_id)."""
    uri, _ = sqlite_store
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"outbox-{tmp_path.name}", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client.create_run(experiment_id).info.run_id


@pytest.mark.parametrize("store_answers", [True, False], ids=["sent-at-once", "kept-then-imported"])
def test_every_kind_of_record_reaches_the_run_as_it_was_logged(tmp_path, artifact_run, capsys, store_answers):
    """Metric values, timestamps and steps, tags, dataset inputs, an artifact folder in its sub-folder and the end
    status arrive the same whether the store took them at once or they came later from the kept file."""
    uri, run_id = artifact_run
    path = tmp_path / "run" / outbox.FILENAME
    path.parent.mkdir()
    box = outbox.Outbox(path, MlflowClient(uri) if store_answers else FakeClient(fail=refused_always, uri=uri))
    box.log_metrics(run_id, [Metric("loss", 0.25, 1_700_000_000_123, 3)])
    box.set_tag(run_id, "note", "kept")
    box.log_inputs(run_id, dataset_inputs(tmp_path))
    box.log_artifacts(run_id, plots_folder(tmp_path), "plots")
    box.end(run_id, "FAILED")
    if not store_answers:
        capsys.readouterr()
        assert outbox._cli(["import", str(path)]) == 0
        assert capsys.readouterr().out == f"{path}: imported 5 records into run(s) {run_id} at {uri}\n"
    assert not path.exists() and not (path.parent / "mlflow-pending-artifacts").exists()

    client = MlflowClient(uri)
    assert [(m.value, m.timestamp, m.step) for m in client.get_metric_history(run_id, "loss")] == [
        (0.25, 1_700_000_000_123, 3)]
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["note"] == "kept"
    assert [(d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags}) for d in run.inputs.dataset_inputs] == [
        ("mnist/train", "ab" * 16, {"mlflow.data.context": "training", "sha256": "ab" * 32, "samples": "5"})]
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/curve.txt"]


def test_tracking_uri_sends_the_records_to_another_store_and_the_output_names_each_run(
        tmp_path, sqlite_store, capsys):
    """Records meant for a store that no longer exists go where --tracking-uri says; the output lists every run."""
    uri, experiment_id = sqlite_store
    run_ids = [MlflowClient(uri).create_run(experiment_id).info.run_id for _ in range(2)]
    box = outbox.Outbox(tmp_path / outbox.FILENAME, FakeClient(fail=refused_always, uri="nowhere://the-old-server"))
    for run_id in run_ids:
        box.end(run_id, "FINISHED")
    capsys.readouterr()
    assert outbox._cli(["import", str(box.path), "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out == f"{box.path}: imported 2 records into run(s) {', '.join(sorted(run_ids))} at {uri}\n"
    assert [MlflowClient(uri).get_run(r).info.status for r in run_ids] == ["FINISHED", "FINISHED"]


def test_a_file_that_cannot_be_imported_does_not_stop_the_next_one(tmp_path, sqlite_run, capsys):
    """Two files: the first holds a record this version does not know (the user is told why, the file stays,
    the exit status is 1); the second, one record long, is still imported into the store it names."""
    uri, run_id = sqlite_run
    unknown = tmp_path / "newer" / outbox.FILENAME
    unknown.parent.mkdir()
    unknown.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri, "op": "renamed"}) + "\n")
    ended = outbox.Outbox(tmp_path / "ended" / outbox.FILENAME, FakeClient(fail=refused_always, uri=uri))
    ended.path.parent.mkdir()
    ended.end(run_id, "KILLED")
    capsys.readouterr()

    assert outbox._cli(["import", str(unknown), str(ended.path)]) == 1
    out, err = capsys.readouterr()
    assert err == f"{unknown}: not imported (ValueError: unknown record 'renamed'); the file is kept, try again later\n"
    assert out == f"{ended.path}: imported 1 records into run(s) {run_id} at {uri}\n"
    assert unknown.exists() and not ended.path.exists()
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"


def test_an_import_racing_the_runs_own_flush_still_succeeds(tmp_path, sqlite_run, capsys, monkeypatch):
    """The run, still alive, sends its backlog and removes the file while an import of the same file runs: both
    sent the records (harmless, see the module's doc), and the import reports success instead of a traceback."""
    uri, run_id = sqlite_run
    box = outbox.Outbox(tmp_path / outbox.FILENAME, FakeClient(fail=refused_always, uri=uri))
    box.end(run_id, "FINISHED")
    replay = outbox.replay

    def replay_while_the_run_flushes(path, client):
        count = replay(path, client)
        path.unlink()  # the run's own Outbox._flush, done first
        return count

    monkeypatch.setattr(outbox, "replay", replay_while_the_run_flushes)
    capsys.readouterr()
    assert outbox._cli(["import", str(box.path)]) == 0
    assert capsys.readouterr().out == f"{box.path}: imported 1 records into run(s) {run_id} at {uri}\n"
