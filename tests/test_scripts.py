"""The shipped shell scripts, executed: what they really run, with which arguments.

Each script is copied byte for byte into a stand-in project and run with bash; recording stand-ins
for `mlflow`, `python`, `scontrol`, `srun`, `sbatch`, `chromium` and `curl` come first on PATH and
write their argv to a file each. No Slurm, server or browser is needed, and nothing is started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, child_env

SCRIPTS = ["slurm/mlflow_server.sh", "slurm/train.sbatch", "slurm/sweep.sbatch", "docs/ui_screenshot.sh"]
STANDINS = ["mlflow", "python", "python3", "scontrol", "srun", "sbatch", "squeue", "chromium", "curl"]
# Records "name\0arg1\0arg2\0..." in a file of its own. `python -c` (a script asking for a free port)
# gets $STANDIN_PORT; the stand-in named $STANDIN_STAYS keeps running, as a server or a training does
# (unless its second argument is $STANDIN_RETURNS: `python -m src.doctor` returns before training starts).
STANDIN = r"""#!/bin/bash
name=$(basename "$0")
printf '%s\0' "$name" "$@" > "$(mktemp "$STANDIN_RECORD/call.XXXXXXXX")"
if [ "${1:-}" = -c ]; then echo "${STANDIN_PORT:-5000}"; exit 0; fi
if [ "$name" = "${STANDIN_STAYS:-}" ] && [ "${2:-}" != "${STANDIN_RETURNS:-}" ]; then exec sleep 30; fi
exit 0
"""

# The values of README's "When things go wrong" row: each must reach python as one argument.
TRICKY = [
    "tracking.experiment_name=with spaces, a comma",
    "tracking.experiment_name='quoted'",
    'tracking.experiment_name="double" and $HOME `id`',
    "tracking.experiment_name=a=b=c",
    "tracking.experiment_name=x; touch {marker}",
    "tracking.experiment_name=$(touch {marker})",
    "+hydra.job.env_set.X=a\\ b",
    "",
]


class Project:
    """A stand-in project root holding copies of the shipped scripts, and the stand-ins' records."""

    def __init__(self, tmp: Path):
        self.root = tmp / "project"
        for script in SCRIPTS:
            (self.root / script).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / script, self.root / script)
        (self.root / "src").mkdir()
        (self.root / "src" / "train.py").write_text("raise SystemExit('the stand-in python never runs this')\n")
        self.bin, self.record = tmp / "bin", tmp / "calls"
        self.bin.mkdir()
        self.record.mkdir()
        for name in STANDINS:
            (self.bin / name).write_text(STANDIN)
            (self.bin / name).chmod(0o755)
        self.marker = tmp / "pwned"

    def env(self, **extra: str) -> dict[str, str]:
        env = child_env({"STANDIN_RECORD": str(self.record), "SLURM_SUBMIT_DIR": str(self.root), **extra})
        env["PATH"] = f"{self.bin}:{env['PATH']}"
        return env

    def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.root / script), *args], cwd=self.root, env=self.env(**env),
                              capture_output=True, text=True, timeout=60)

    def calls(self, name: str) -> list[list[str]]:
        found = []
        for path in self.record.iterdir():
            called, *argv = path.read_bytes().split(b"\0")[:-1]
            if called.decode() == name:
                found.append([a.decode() for a in argv])
        return found

    def tricky(self) -> list[str]:
        return [a.format(marker=self.marker) for a in TRICKY]


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path)


def option(argv: list[str], name: str) -> str:
    """The value of `--name VALUE` or `--name=VALUE`, which must be given exactly once."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    values += [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


# ---------------------------------------------------------------------------------------------
# servers bind 127.0.0.1 unless told otherwise


def test_mlflow_server_binds_loopback_by_default(project):
    # HOST is a common shell variable; only the documented MLFLOW_HOST may change the bind address
    result = project.run("slurm/mlflow_server.sh", HOST="0.0.0.0")
    assert result.returncode == 0, result.stderr
    [argv] = project.calls("mlflow")
    assert argv[0] == "server"
    assert option(argv, "--host") == "127.0.0.1"
    assert option(argv, "--port") == "5000"
    assert option(argv, "--backend-store-uri") == f"sqlite:///{project.root}/mlruns/mlflow.db"
    assert "--allowed-hosts" not in argv
    assert "0.0.0.0" not in " ".join(argv)


def test_mlflow_server_uses_the_documented_overrides(project):
    result = project.run("slurm/mlflow_server.sh", MLFLOW_HOST="10.1.2.3", MLFLOW_PORT="5123", MLFLOW_WORKERS="2",
                         MLFLOW_BACKEND_STORE_URI="sqlite:////shared/x.db")
    assert result.returncode == 0, result.stderr
    [argv] = project.calls("mlflow")
    assert option(argv, "--host") == "10.1.2.3" and option(argv, "--port") == "5123"
    assert option(argv, "--workers") == "2" and option(argv, "--backend-store-uri") == "sqlite:////shared/x.db"
    assert "10.1.2.3:5123" in option(argv, "--allowed-hosts").split(",")
    # off loopback the server requires a password (issue 28): MLflow's basic-auth app, and the note says so
    assert option(argv, "--app-name") == "basic-auth"
    assert "listening on 10.1.2.3 with authentication" in result.stderr


def test_ui_screenshot_serves_and_browses_loopback_only(project):
    port = "54321"
    try:
        result = project.run("docs/ui_screenshot.sh", "#/experiments", str(project.root / "out.png"),
                             STANDIN_PORT=port, STANDIN_STAYS="python", HOST="0.0.0.0")
    finally:
        Path(f"/tmp/mlflow-ui-{port}.log").unlink(missing_ok=True)
    assert result.returncode == 0, result.stderr
    [ui] = [argv for argv in project.calls("python") if argv[:3] == ["-m", "mlflow", "ui"]]
    assert option(ui, "--host") == "127.0.0.1" and option(ui, "--port") == port
    assert option(ui, "--backend-store-uri") == f"sqlite:///{project.root}/mlruns/mlflow.db"
    [browser] = project.calls("chromium")
    assert browser[-1] == f"http://127.0.0.1:{port}/#/experiments"
    assert option(browser, "--screenshot") == str(project.root / "out.png")


# ---------------------------------------------------------------------------------------------
# overrides reach python -m src.train unchanged


def test_train_sbatch_passes_each_override_as_one_argument(project):
    args = project.tricky()
    result = project.run("slurm/train.sbatch", *args, SLURM_JOB_ID="77")
    assert result.returncode == 0, result.stderr
    # src.doctor at the head of the log, then training: each gets every override as one argument
    assert sorted(project.calls("python")) == [["-m", "src.doctor", "hardware=gpu", *args],
                                               ["-m", "src.train", "hardware=gpu", *args]]
    assert project.calls("scontrol") == []  # no time limit signal: no requeue
    assert not project.marker.exists()


def test_sweep_sbatch_passes_each_override_as_one_argument(project):
    args = project.tricky()
    result = project.run("slurm/sweep.sbatch", *args, SLURM_JOB_ID="78")
    assert result.returncode == 0, result.stderr
    [argv] = project.calls("python")
    assert argv[:4] == ["-m", "src.train", "-m", "hydra/launcher=slurm"]
    assert argv[4].startswith("hydra.sweep.dir=multirun/") and argv[4].endswith("/sweep-78")
    assert argv[5:] == args
    assert not project.marker.exists()


def test_a_requeued_sweep_sbatch_continues_in_the_folder_of_its_first_start(project):
    """A requeue after midnight must not start a second sweep in a new dated folder: the same folder resumes it."""
    earlier = project.root / "multirun" / "2026-01-01" / "sweep-78"
    earlier.mkdir(parents=True)
    (project.root / "multirun" / "2026-01-01" / "sweep-7").mkdir()  # another job's folder
    assert project.run("slurm/sweep.sbatch", "seed=1,2", SLURM_JOB_ID="78", SLURM_RESTART_COUNT="1").returncode == 0
    assert project.run("slurm/sweep.sbatch", "seed=1,2", SLURM_JOB_ID="79", SLURM_RESTART_COUNT="1").returncode == 0
    assert project.run("slurm/sweep.sbatch", "seed=1,2", SLURM_JOB_ID="78").returncode == 0  # a first start
    folders = sorted(argv[4] for argv in project.calls("python"))
    today = [f for f in folders if "2026-01-01" not in f]
    assert "hydra.sweep.dir=multirun/2026-01-01/sweep-78" in folders  # the requeue
    assert len(today) == 2 and all(f.endswith(("/sweep-79", "/sweep-78")) for f in today)  # no earlier folder


def test_train_sbatch_requeues_on_the_time_limit_signal(project):
    """SLURM's USR1 (--signal=B:USR1@120): the script stops python with TERM and runs `scontrol requeue JOB`."""
    process = subprocess.Popen(["bash", str(project.root / "slurm/train.sbatch"), "trainer.epochs=3"], cwd=project.root,
                               env=project.env(SLURM_JOB_ID="79", STANDIN_STAYS="python", STANDIN_RETURNS="src.doctor"),
                               text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while len(project.calls("python")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(project.calls("python")) == [["-m", "src.doctor", "hardware=gpu", "trainer.epochs=3"],
                                               ["-m", "src.train", "hardware=gpu", "trainer.epochs=3"]]
    started = time.monotonic()
    os.kill(process.pid, signal.SIGUSR1)
    output, _ = process.communicate(timeout=20)
    assert time.monotonic() - started < 10  # python was stopped, not waited for
    assert process.returncode != 0  # the job ends with python's (signal) status
    assert project.calls("scontrol") == [["requeue", "79"]]
    assert "time limit near" in output
