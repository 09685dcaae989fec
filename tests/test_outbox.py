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
from src import outbox


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
        self._call(("artifacts", run_id, tuple(sorted(p.name for p in Path(local_dir).iterdir()))))

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
    caplog.set_level("INFO", logger="src.outbox")
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
    assert f"Kept it in {box.path}; when the store answers again: python -m src.outbox import {box.path}" in caplog.text
    assert f"MLflow store http://fake:5000 answers again: sent the records kept in {box.path}" in caplog.text


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
    """Sent at once while the store answers; then two uploads fail (calls 2 and 3): each is kept as its own copy."""
    client = FakeClient(fail=lambda n: n in (2, 3))
    box = outbox.Outbox(tmp_path / outbox.FILENAME, client)
    for name in ("first", "second", "third"):
        temporary = tmp_path / "tmp-artifacts"
        temporary.mkdir()
        (temporary / f"{name}.txt").write_text(name)
        box.log_artifacts("r", temporary)
        shutil.rmtree(temporary)  # the caller's folder is temporary: a kept copy must not depend on it
    assert client.sent == [("artifacts", "r", ("first.txt",))]
    copies = sorted((tmp_path / "mlflow-pending-artifacts").iterdir())
    assert [(p.name, [f.name for f in p.iterdir()]) for p in copies] == [("0000", ["second.txt"]), ("0001", ["third.txt"])]
    box.end("r", "FINISHED")
    assert client.sent[1:] == [("artifacts", "r", ("second.txt",)), ("artifacts", "r", ("third.txt",)),
                               ("end", "r", "FINISHED")]
    assert not box.path.exists() and not (tmp_path / "mlflow-pending-artifacts").exists()


def test_slow_store_epochs_queue_in_order_and_the_end_waits_for_them(tmp_path):
    """MLflowMetrics hands epochs to a background thread; with a slow store, training does not wait per
    epoch, and an interrupted run's end (runs._end) still reaches the store after every queued epoch."""
    from src import callbacks, runs

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
    assert [steps for op, steps in ops if op == "metrics"] == [
        (("loss", s), ("epoch_time_s", s)) for s in (1, 2, 3)
    ]
    assert ops[3:] == [("tags", (("failure_reason", "interrupted"),)), ("end", "KILLED")]


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
            return subprocess.run([sys.executable, "-m", "src.outbox", "import", str(path)], cwd=ROOT,
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
    with pytest.raises(SystemExit):
        outbox._cli(["--help"])
    usage = capsys.readouterr().out
    assert usage.startswith("usage: python -m src.outbox [-h]") and "{import}" in usage
    assert "What a run could not send to its tracking store" in usage and "Importing twice" not in usage
