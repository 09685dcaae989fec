"""What a run could not send to its tracking store, kept in a local file and imported later.

A tracking server that goes down at hour 3 must not stop (or silently thin out) training:
every metric batch, tag, dataset input, artifact folder and the run's end status goes through `Outbox`. It
sends each record at once (MLflow's HTTP client retries a few times first, see
`store.connect`); a record that still fails is appended to a JSON-lines file, and once the
store answers again the backlog is sent in order and the file removed. What is left at the end
is imported with

    python -m src.outbox import <output dir>/mlflow-pending.jsonl [--tracking-uri URI]

Importing twice is harmless: MLflow ignores a metric point it already has (same key, step,
timestamp and value).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag
from mlflow.tracking import MlflowClient

from ..errors import UserError
from . import store

log = logging.getLogger(__name__)

FILENAME = "mlflow-pending.jsonl"


def import_command(path: Path) -> str:
    return f"python -m src.outbox import {path}"


class Outbox:
    """Sends run records to the tracking store, keeping those that fail in `path` (JSON lines)."""

    def __init__(self, path: Path, client: MlflowClient | None = None):
        self.path = Path(path)
        self.client = client or MlflowClient()
        self.uri = self.client.tracking_uri

    # -- what a run sends ------------------------------------------------------------------

    def log_metrics(self, run_id: str, metrics: list[Metric]) -> None:
        record = {"op": "metrics", "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics]}
        self._send(run_id, record)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._send(run_id, {"op": "tags", "tags": {key: value}})

    def log_inputs(self, run_id: str, inputs: list[dict]) -> None:
        """Dataset inputs as `inputs.records` makes them: {"dataset": Dataset fields, "tags": {...}}."""
        self._send(run_id, {"op": "inputs", "inputs": inputs})

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        """Upload a folder; kept as a copy beside the file when the upload fails (local_dir may be temporary)."""
        record = {"op": "artifacts", "local_dir": str(local_dir), "artifact_path": artifact_path}
        if not self._try(run_id, record):
            copy = self.path.parent / "mlflow-pending-artifacts" / f"{self._lines():04d}"
            shutil.copytree(local_dir, copy)
            self._keep(run_id, {**record, "local_dir": str(copy)})

    def end(self, run_id: str, status: str) -> None:
        self._send(run_id, {"op": "end", "status": status})

    # -- sending and keeping ---------------------------------------------------------------

    def _send(self, run_id: str, record: dict) -> None:
        if not self._try(run_id, record):
            self._keep(run_id, record)

    def _try(self, run_id: str, record: dict) -> bool:
        if self.path.exists():  # keep the order: the backlog goes first
            self._flush()
            if self.path.exists():
                return False
        try:
            _apply(self.client, run_id, record)
            return True
        except Exception as err:  # MlflowException (HTTP errors after MLflow's retries), OSError, SQL errors
            log.warning("MLflow store %s did not take the run's %s (%s: %s)", self.uri, record["op"], type(err).__name__,
                        str(err).splitlines()[0][:300] if str(err) else "")
            return False

    def _keep(self, run_id: str, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"run_id": run_id, "tracking_uri": self.uri, **record}) + "\n")
            f.flush()
        log.warning("Kept it in %s; when the store answers again: %s", self.path, import_command(self.path))

    def _lines(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path) as f:
            return sum(1 for _ in f)

    def _flush(self) -> None:
        try:
            replay(self.path, self.client)
        except Exception:
            return  # still unreachable: the file stays
        log.info("MLflow store %s answers again: sent the records kept in %s", self.uri, self.path)
        _remove(self.path)


def _apply(client: MlflowClient, run_id: str, record: dict) -> None:
    op = record["op"]
    if op == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, float(v), int(t), int(s)) for k, v, t, s in record["metrics"]])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()])
    elif op == "inputs":
        datasets = [
            DatasetInput(Dataset(**i["dataset"]), [InputTag(k, v) for k, v in i["tags"].items()])
            for i in record["inputs"]
        ]
        client.log_inputs(run_id, datasets=datasets)
    elif op == "artifacts":
        client.log_artifacts(run_id, record["local_dir"], record["artifact_path"])
    elif op == "end":
        client.set_terminated(run_id, record["status"])
    else:
        raise ValueError(f"unknown record {op!r}")


def replay(path: Path, client: MlflowClient) -> int:
    """Send every record of `path`, in order; returns how many. Raises on the first failure."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for record in records:
        _apply(client, record["run_id"], record)
    return len(records)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    shutil.rmtree(path.parent / "mlflow-pending-artifacts", ignore_errors=True)


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.outbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["import"])
    parser.add_argument("files", nargs="+", type=Path, help=f"{FILENAME} files from runs' output folders")
    parser.add_argument("--tracking-uri", help="default: the store each record was meant for")
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            uri = args.tracking_uri or lines[0]["tracking_uri"]
            if store.sqlite_path(uri) is not None:
                store.not_sqlite(store.sqlite_path(uri))
            if store.is_server(uri):
                store.check(uri)
                store.authenticate(uri)  # the variables, else the owner's credentials file
            mlflow.set_tracking_uri(uri)
            count = replay(path, MlflowClient(uri))
        except UserError as err:
            print(f"{path}: not imported: {err}", file=sys.stderr)
            return 2  # the same store for every file: no use trying the next
        except Exception as err:
            print(f"{path}: not imported ({type(err).__name__}: {err}); the file is kept, try again later", file=sys.stderr)
            status = 1
            continue
        runs = sorted({r["run_id"] for r in lines})
        _remove(path)
        print(f"{path}: imported {count} records into run(s) {', '.join(runs)} at {uri}")
    return status


if __name__ == "__main__":
    sys.exit(_cli())
