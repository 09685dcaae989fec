"""Helpers for tests that drive `python -m src.train` as a user does: real subprocesses, real signals.

Each process runs in the test's own folder (Hydra's outputs/ and multirun/ land there), with the
worktree on PYTHONPATH, so a printed command can be run exactly as printed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
# About 0.6 s an epoch on 2 busy CPU cores (125 steps of 4 samples): time to signal within epoch 3.
SLOW = ["trainer.batch_size=4", "trainer.verbose=0"]


def start(args: list[str], cwd: Path, module: str = "src.train") -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run(command: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command as a user types it (`python -m ...`), with this interpreter as `python`; `env` adds variables."""
    if command[0] == "python":
        command = [sys.executable, *command[1:]]
    return subprocess.run(command, cwd=cwd, env={**ENV, **(env or {})}, text=True, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # as one log, in order


def wait_for_epochs(process: subprocess.Popen, cwd: Path, epochs: int, pattern: str = "outputs/*/*/backup",
                    timeout: float = 300) -> Path:
    """Wait until a backup folder under `cwd` commits `epochs` finished epochs; return that folder."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for state in cwd.glob(f"{pattern}/state.json"):
            try:
                if len(json.loads(state.read_text())["epochs"]) >= epochs:
                    return state.parent
            except (OSError, ValueError):
                pass  # replaced while read
        if process.poll() is not None:
            raise AssertionError(f"the training process exited early:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"no backup with {epochs} epochs within {timeout} s")


def printed_resume_command(output: str, prefix: str | None = None) -> list[str]:
    """The command that the interrupt message prints (or, with `prefix`, the line that follows it), split as a
    shell would."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if prefix and prefix in line:
            return shlex.split(line.split(prefix, 1)[1])
        if not prefix and line.startswith("Resume it"):
            return shlex.split(lines[i + 1])
    raise AssertionError(f"no resume command printed:\n{output[-3000:]}")
