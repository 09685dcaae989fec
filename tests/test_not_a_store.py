"""A tracking URI naming a file that is not an SQLite database: every command says so in a few lines, exits 2,
and names the fix (SQLAlchemy's own error was ~80 lines of traceback, and doctor said "reachable, writable")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, base_overrides, child_env

MESSAGE = "is not an SQLite database"
FIX = "Fix: point tracking.tracking_uri / MLFLOW_TRACKING_URI at a new file or at the right database"


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "x.db"
    path.write_text("these are my notes, not a database\n")
    return path


def run(module: str, *args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=child_env(), capture_output=True,
                          text=True, timeout=300)


def one_screen_refusal(result: subprocess.CompletedProcess, stream: str = "stderr") -> str:
    text = getattr(result, stream)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert MESSAGE in text and FIX in text
    assert "Traceback" not in result.stderr and "sqlalchemy" not in result.stderr.lower()
    return text


def test_train_refuses_it_before_training(text_file, data_dir, store, experiment, tmp_path):
    overrides = [*base_overrides(data_dir, store, experiment), f"tracking.tracking_uri=sqlite:///{text_file}",
                 "backend=jax", f"hydra.run.dir={tmp_path}/run"]
    one_screen_refusal(run("src.train", *overrides))
    assert text_file.read_text() == "these are my notes, not a database\n"  # untouched


def test_compare_refuses_it(text_file, tmp_path):
    one_screen_refusal(run("src.compare", "mnist", "--tracking-uri", f"sqlite:///{text_file}", "--out", str(tmp_path)))


def test_outbox_import_refuses_it_and_keeps_the_file(text_file, tmp_path):
    kept = tmp_path / "mlflow_outbox.jsonl"
    kept.write_text(json.dumps({"kind": "end", "run_id": "0" * 32, "status": "FINISHED",
                                "tracking_uri": f"sqlite:///{text_file}"}) + "\n")
    one_screen_refusal(run("src.tracking.outbox", "import", str(kept)))
    assert kept.exists()


def test_doctor_marks_it_unusable(text_file):
    result = run("src.doctor", f"tracking.tracking_uri=sqlite:///{text_file}")
    assert result.returncode != 0, result.stdout
    [line] = [line for line in result.stdout.splitlines() if MESSAGE in line]
    assert line.lstrip().startswith("✗") and FIX in line
    assert "reachable, writable" not in result.stdout
