"""A thin Hydra Sweeper over src/sweeps/search.py, which holds the search space, the study and the trial loop.

Hydra imports every module of `hydra_plugins` when it scans for plugins: this one imports the project (and,
through it, Optuna) only when a sweep is set up.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        # The settings are read from the composed config (schema: src/config.py OptunaSweeperConfig).
        self.config: Optional[DictConfig] = None
        self.hydra_context = None
        self.launcher = None
        self._composing = threading.Lock()  # trials start from several threads; Hydra's config loader is shared

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context  # validate_batch_is_legal composes with its config loader
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.in_process = isinstance(self.launcher, BasicLauncher)  # runs jobs in this process, one at a time
        self.together = hasattr(self.launcher, "launch_numbered")  # hydra/launcher=fused: a batch in one program

    def _launch(self, overrides: List[str], job_num: int):
        """One trial's job, numbered as its trial; blocks until it ends."""
        with self._composing:  # composes the job's config first: a bad override fails this trial only
            self.validate_batch_is_legal([overrides])
        [result] = self.launcher.launch([overrides], initial_job_idx=job_num)
        return result

    def _launch_together(self, batch: List[tuple], refill):
        """The batch's trials' jobs trained together, numbered as their trials, freed slots refilled by `refill`
        (src/sweeps/search.py Refill); blocks until they end. (The launcher composes each job once;
        validate_batch_is_legal would compose them all again first: 0.3 s a trial.)"""
        overrides = [list(o) for o, _ in batch]
        return self.launcher.launch_numbered(overrides, [num for _, num in batch], refill=refill)

    def sweep(self, arguments: List[str]) -> Any:
        from src.sweeps import search

        try:
            study = search.Search(self.config, self._launch, self.in_process, arguments,
                                  launch_together=self._launch_together if self.together else None)
        except search.SearchError as err:  # src.search.SweepCheck refuses it earlier, when configured
            print(f"Error: {err}", file=sys.stderr)
            sys.exit(2)
        OmegaConf.save(self.config, study.sweep_dir / "multirun.yaml")
        try:
            return study.run()
        finally:
            study.finish()
