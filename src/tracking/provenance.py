"""Where a run came from: config-group choices, code version, software, machine, SLURM ids (MLflow tags).

Versions are read from the installed packages' metadata, so nothing here imports Keras or a backend.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess

from . import names
from ..paths import PROJECT_ROOT
from .redaction import redact

SLURM_TAGS = [
    ("SLURM_JOB_ID", names.SLURM_JOB),
    ("SLURM_ARRAY_JOB_ID", names.SLURM_ARRAY_JOB),
    ("SLURM_ARRAY_TASK_ID", names.SLURM_ARRAY_TASK),
    ("SLURM_RESTART_COUNT", names.SLURM_RESTART_COUNT),  # > 0: a requeued job resumed this run
]


def tags(choices: dict, overrides: list[str], backend: str) -> dict[str, str]:
    """Provenance tags of a run on `backend` (tensorflow, jax or torch)."""
    found = {group: str(choice) for group, choice in choices.items() if "/" not in group and not group.startswith("hydra")}
    found["overrides"] = " ".join(redact(o) for o in overrides) or "(none)"
    commit, dirty = _git_state()
    found.update(
        {
            names.GIT_COMMIT: commit,
            "git.dirty": dirty,
            names.BACKEND: backend,
            names.BACKEND_VERSION: version(backend),
            names.KERAS: version("keras"),
            "host": socket.gethostname(),
        }
    )
    for var, tag in SLURM_TAGS:
        if os.environ.get(var):
            found[tag] = os.environ[var]
    return found


def version(package: str) -> str:
    """The installed version of a distribution (tensorflow, jax, torch, keras, ...), or "unknown"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _git_state() -> tuple[str, str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return commit, str(bool(status.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
