"""Folder checks that cost milliseconds at start instead of a crash at the end of a long run.

A read-only or full output folder (Hydra's run/sweep dir, the SQLite store's folder) is found
by writing and syncing a small probe file, which also catches a quota that is used up, and by
asking for a minimum of free space for checkpoints, the saved model and plots.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback

from .errors import UserError

MIN_FREE_BYTES = 100 * 2**20  # a few checkpoints and a saved model of the lab's nets
PROBE_BYTES = 64 * 2**10


class FolderError(UserError):
    """A folder the run writes to is not writable or is full; the message names the fix."""


def check_folder(folder: Path, what: str, fix: str) -> None:
    """Refuse a `folder` (or, when it does not exist yet, its nearest existing parent) we cannot fill."""
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".le5-probe-") as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
        free = shutil.disk_usage(existing).free
    except OSError as err:
        raise FolderError(f"cannot write the {what} {folder} ({err.strerror or err}).\nFix: {fix}") from err
    if free < MIN_FREE_BYTES:
        raise FolderError(
            f"the {what} {folder} is (nearly) full: {free / 2**20:.0f} MiB free, "
            f"{MIN_FREE_BYTES / 2**20:.0f} MiB needed.\nFix: {fix}"
        )


OUTPUT_FIX = (
    "free space or fix the permissions there, or write elsewhere: "
    "hydra.run.dir=/scratch/$USER/outputs (hydra.sweep.dir=... with -m)."
)


class OutputFolderCheck(Callback):
    """Hydra callback (conf/config.yaml): checks the run or sweep folder before Hydra creates it.

    Hydra would otherwise fail with a bare OSError while saving .hydra/, or the run would
    fail hours later while saving its model.
    """

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(folder: str) -> None:
        try:
            check_folder(Path(folder), "output folder", OUTPUT_FIX)
        except FolderError as err:
            # Logging is not configured yet (Hydra does that per job): one message, no traceback.
            print(f"Error: {err}", file=sys.stderr)
            sys.exit(2)
