"""The launcher of a sweep that resumes: Hydra's configured launcher (basic, or hydra-submitit-launcher's SLURM
array), given only the points that the sweep still needs (src/sweeps/manifest.py says which and why).
Imports MLflow and Hydra, never Keras."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlflow.tracking import MlflowClient

from .. import overrides as ov
from ..tracking import liveness, store
from . import sweep
from .manifest import BACKUP_OVERRIDE, Manifest, by_point, next_job_num, plan, point_hash

log = logging.getLogger(__name__)


class ResumingLauncher:
    """Hydra's configured launcher, given only the points the sweep still needs (see the module docstring)."""

    def __init__(self, inner, sweeper):
        self.inner, self.sweeper = inner, sweeper

    def __getattr__(self, name):  # everything else is the inner launcher's
        return getattr(self.inner, name)

    def launch(self, job_overrides, initial_job_idx: int):
        config = self.sweeper.config
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        record = sweep_dir / sweep.PARENT_FILE
        if not record.is_file():  # the MLflow sweep callback is off: a plain Hydra sweep
            return self.inner.launch(job_overrides, initial_job_idx)
        parent = json.loads(record.read_text())
        client = MlflowClient(parent["tracking_uri"])
        liveness.reconcile(client, [parent["experiment_id"]])  # children of a killed driver count as FAILED
        children = by_point(store.children(client, parent["run_id"], parent["experiment_id"]))
        manifest = Manifest(sweep_dir)
        todo, skipped, resumed = [], 0, 0
        for overrides in job_overrides:
            cfg = self.sweeper.hydra_context.config_loader.load_sweep_config(config, list(overrides))
            point = point_hash(cfg)
            manifest.add(point, overrides)
            action, folder = plan(children.get(point, []))
            if action == "skip":
                skipped += 1
                continue
            overrides = ov.without(list(overrides), [BACKUP_OVERRIDE])  # `++trainer.backup_dir=` too
            if action == "resume":
                resumed += 1
                overrides.append(f"{BACKUP_OVERRIDE}={folder}")
            todo.append(overrides)
        manifest.save(sweep.command(config))
        if skipped or resumed:
            log.info("Resuming the sweep in %s: %d point(s) already FINISHED (skipped), %d to run (%d from their "
                     "checkpoints)", sweep_dir, skipped, len(todo), resumed)
        if not todo:
            return []
        return self.inner.launch(todo, max(initial_job_idx, next_job_num(sweep_dir)))
