"""N training processes at once into one MLflow store; counts every metric point afterwards.

    python benchmarks/concurrent_runs.py --processes 16 --store sqlite    # a fresh SQLite file
    python benchmarks/concurrent_runs.py --processes 16 --store server    # `mlflow server` on 127.0.0.1

Each process is a real `python -m src.train` on tiny synthetic MNIST (tests/conftest.py's writer),
as a SLURM job array hitting one store would be. Prints one JSON line: runs found, metric points
found / expected, failures ("database is locked" counted apart) and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s")
TEST_METRICS = ("test_loss", "test_accuracy")


def launch(processes: int, uri: str, data_dir: Path, experiment: str, folder: Path, epochs: int = 3) -> dict:
    """Start `processes` trainings at once against `uri`; wait; return what each process did."""
    started = time.monotonic()
    jobs = []
    for i in range(processes):
        log = open(folder / f"job-{i}.log", "w")
        command = [
            sys.executable, "-m", "src.train", f"data_dir={data_dir}", f"tracking.tracking_uri={uri}",
            f"tracking.experiment_name={experiment}", "dataset.download=false", "dataset.sha256=null", "hardware=cpu",
            f"trainer.epochs={epochs}", "dataset.validation_size=100", "trainer.batch_size=64", f"seed={i}",
            f"hydra.run.dir={folder / f'job-{i}'}",
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"}
        jobs.append((subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    codes = []
    for process, log in jobs:
        codes.append(process.wait(timeout=1800))
        log.close()
    wall = time.monotonic() - started
    logs = [(folder / f"job-{i}.log").read_text() for i in range(processes)]
    return {
        "wall_s": round(wall, 1),
        "exit_codes": codes,
        "locked": sum("database is locked" in text for text in logs),
        "outbox_used": sum("did not take" in text for text in logs),  # records the store refused at first
        "outbox_left": sum(1 for _ in folder.glob("job-*/mlflow-pending*")),  # still waiting for an import
        "logs": logs,
    }


def count(uri: str, experiment: str, epochs: int) -> dict:
    """Every run of `experiment` and its metric points, against what each should have."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000) if found else []
    points = 0
    complete = 0
    for run in runs:
        histories = {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in EPOCH_METRICS}
        histories.update({key: [m.step for m in client.get_metric_history(run.info.run_id, key)] for key in TEST_METRICS})
        points += sum(len(steps) for steps in histories.values())
        complete += all(histories[k] == list(range(1, epochs + 1)) for k in EPOCH_METRICS) and all(
            len(histories[k]) == 1 for k in TEST_METRICS
        ) and run.info.status == "FINISHED"
    return {
        "runs": len(runs),
        "complete_runs": complete,
        "points": points,
        "statuses": sorted({run.info.status for run in runs}),
    }


def expected_points(processes: int, epochs: int) -> int:
    return processes * (len(EPOCH_METRICS) * epochs + len(TEST_METRICS))


def measure(processes: int, store: str, folder: Path, epochs: int = 3) -> dict:
    from conftest import write_mnist
    from mlflow_server import MlflowServer

    data_dir = folder / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    write_mnist(data_dir / "mnist.npz")
    experiment = f"concurrency-{store}-{processes}"
    server = None
    if store == "server":
        server = MlflowServer(folder / "server", workers=int(os.environ.get("LE5_BENCH_SERVER_WORKERS", "4"))).start()
        uri = server.uri
    else:
        uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"  # fresh: all processes create its schema at once
    try:
        result = launch(processes, uri, data_dir, experiment, folder, epochs)
        result.update(count(uri, experiment, epochs))
    finally:
        if server is not None:
            server.kill()
    result.update(store=store, processes=processes, expected_points=expected_points(processes, epochs))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--store", choices=["sqlite", "server"], default="sqlite")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.processes, args.store, Path(tmp), args.epochs)
    failed = [i for i, code in enumerate(result["exit_codes"]) if code != 0]
    for i in failed[:3]:
        print(f"--- job {i} (exit {result['exit_codes'][i]}):\n{result['logs'][i][-3000:]}", file=sys.stderr)
    del result["logs"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
