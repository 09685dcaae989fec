"""A thin Hydra Launcher over src/fused/launch.py, which groups the sweep's points, trains each group as one compiled
program and ends each point as its own job and MLflow run.

Hydra imports every module of `hydra_plugins` when it scans for plugins: this one imports the project (and,
through it, Keras and JAX) only when a sweep is launched.
"""

from __future__ import annotations

from typing import Sequence

from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig


class FusedLauncher(Launcher):
    def __init__(self, vmap_members: int | None = None) -> None:  # src/fused/launch.py reads it from the config
        self.config: DictConfig | None = None
        self.hydra_context = None
        self.task_function = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        return self.launch_numbered(job_overrides, range(initial_job_idx, initial_job_idx + len(job_overrides)))

    def launch_numbered(self, job_overrides: Sequence[Sequence[str]], job_nums: Sequence[int], refill=None):
        """The jobs trained together, numbered `job_nums` (an Optuna batch: its trials' numbers, which a repeat the
        sweeper declined leaves with gaps); `refill` (an Optuna study's src.sweeps.search.Refill) fills freed slots."""
        from src.fused.launch import Launch

        return Launch(self.config, self.hydra_context, self.task_function).run(job_overrides, list(job_nums), refill)
