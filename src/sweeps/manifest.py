"""A sweep that resumes: its manifest, and the launcher that runs only the points not yet FINISHED.

Rerunning a sweep's command with `hydra.sweep.dir=<its folder>` continues that sweep (src/sweeps/sweep.py reopens its
MLflow parent run). Before any job starts, `ResumingLauncher` (around Hydra's own launcher: basic, or
hydra-submitit-launcher's SLURM array) composes every point, hashes its resolved config, and records the points in
`<sweep dir>/sweep_manifest.json`. A point is identified by that hash, which each child run carries as a tag
(names.SWEEP_POINT), never by its job number:

- a point with a FINISHED child is skipped;
- a point whose last child FAILED or was KILLED (or died: reconciled by src/tracking/liveness.py first) and left a checkpoint
  (its `backup_dir` tag, with a state.json there) runs again with `trainer.backup_dir=<that folder>`: the same child
  run continues from its last finished epoch;
- any other point runs as a new child run, tagged with the run it retries (names.SWEEP_RETRY_OF);
- job numbers continue after the highest job folder of the sweep, so no job folder is ever overwritten.

`python -m src.compare <parent>` reads the manifest and the store: "N of M finished, K failed, L missing", and the
command that resumes the sweep. Imports MLflow and Hydra, never Keras.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from .. import overrides as ov
from ..paths import CHECKPOINT_STATE
from ..tracking import names, status

log = logging.getLogger(__name__)

FILE = "sweep_manifest.json"
BACKUP_OVERRIDE = "trainer.backup_dir"


def point_hash(cfg) -> str:
    """A point's identity: a hash of its resolved config without Hydra's node and the settings that do not change
    what is trained (overrides.NOT_TRAINED)."""
    resolved = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    resolved.pop("hydra", None)
    resolved = OmegaConf.to_container(OmegaConf.create(resolved), resolve=True)
    for key in ov.NOT_TRAINED:
        node, *path = key.split(".")
        if not path:
            resolved.pop(node, None)
        elif isinstance(resolved.get(node), dict):
            resolved[node].pop(path[0], None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resume_command(overrides: list[str], sweep_dir: Path) -> str:
    """The command that continues the sweep in `sweep_dir`: its own overrides, in its folder."""
    return ov.train_command([*ov.without(overrides, ["hydra.sweep.dir"]), f"hydra.sweep.dir={sweep_dir}"],
                            multirun=True)


@dataclass
class Progress:
    total: int
    finished: int
    failed: int  # FAILED or KILLED: their last child did not finish
    running: int
    missing: int  # no child run yet

    def line(self) -> str:
        running = f", {self.running} running" if self.running else ""
        return (f"{self.finished} of {self.total} finished, {self.failed} failed, {self.missing} missing{running}")


class Manifest:
    """<sweep dir>/sweep_manifest.json: the command, and every point (hash -> its overrides, in the order asked)."""

    def __init__(self, sweep_dir: Path):
        self.path = Path(sweep_dir) / FILE
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"points": {}}

    @property
    def points(self) -> dict[str, dict]:
        return self.data["points"]

    def add(self, point: str, overrides: list[str]) -> None:
        self.points.setdefault(point, {"index": len(self.points), "overrides": list(overrides)})

    def save(self, command: list[str]) -> None:
        self.data["command"] = list(command)
        self.data["resume"] = resume_command(command, self.path.parent)
        tmp = self.path.with_name(f".{FILE}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)  # never a half-written manifest

    def progress(self, children: list) -> Progress:
        """Each point's state from its children's runs (the last one decides; FINISHED anywhere wins)."""
        states = {point: "missing" for point in self.points}
        for run in sorted(children, key=lambda r: r.info.start_time or 0):
            point = run.data.tags.get(names.SWEEP_POINT)
            if point in states and states[point] != status.FINISHED:
                states[point] = run.info.status
        values = list(states.values())
        return Progress(
            total=len(values), finished=values.count(status.FINISHED), running=values.count(status.RUNNING),
            failed=sum(v in (status.FAILED, status.KILLED) for v in values), missing=values.count("missing"),
        )


def next_job_num(sweep_dir: Path) -> int:
    """One past the highest job number among the sweep's job folders (`<num>_<id>`)."""
    nums = [int(m.group(1)) for p in Path(sweep_dir).glob("*_*") if p.is_dir() and (m := re.match(r"(\d+)_", p.name))]
    return max(nums, default=-1) + 1


def by_point(children: list) -> dict[str, list]:
    """The sweep's children per point hash, oldest first."""
    found: dict[str, list] = {}
    for run in sorted(children, key=lambda r: r.info.start_time or 0):
        if point := run.data.tags.get(names.SWEEP_POINT):
            found.setdefault(point, []).append(run)
    return found


def plan(runs: list) -> tuple[str, str | None]:
    """What to do with a point given its children: ("skip", None), ("resume", backup folder) or ("new", None)."""
    if any(status.finished(r) for r in runs):
        return "skip", None
    for run in reversed(runs):
        folder = run.data.tags.get(names.BACKUP_DIR)
        if not status.running(run) and folder and (Path(folder) / CHECKPOINT_STATE).is_file():
            return "resume", folder
    return "new", None
