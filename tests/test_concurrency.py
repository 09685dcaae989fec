"""16 trainings at once into one store, SQLite and `mlflow server`: every metric point arrives, none left behind.

Each process is a real `python -m src.train` (benchmarks/concurrent_runs.py, which also prints
the wall time); on 2 cores the 16 TensorFlow starts dominate, so this is marked `stress`.
"""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from concurrent_runs import expected_points, measure  # noqa: E402

PROCESSES = 16


@pytest.mark.stress
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_sixteen_processes_into_one_store_lose_nothing(store, tmp_path):
    result = measure(PROCESSES, store, tmp_path, epochs=3)
    logs = result.pop("logs")
    print(result)  # pytest -s shows the counts and the wall time
    failed = [i for i, code in enumerate(result["exit_codes"]) if code != 0]
    assert failed == [], logs[failed[0]][-3000:] if failed else ""
    assert result["locked"] == 0  # no "database is locked" anywhere
    # A store starved of CPU (16 TensorFlow starts on 2 cores beside the server) may refuse a record at first: the
    # outbox keeps it and sends it when the store answers again (CI saw this twice in 16 runs). Nothing may be left.
    assert result["outbox_left"] == 0
    assert result["runs"] == result["complete_runs"] == PROCESSES
    assert result["statuses"] == ["FINISHED"]
    assert result["points"] == result["expected_points"] == expected_points(PROCESSES, 3) == 272
