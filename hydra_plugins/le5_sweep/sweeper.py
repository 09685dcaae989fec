"""Hydra's basic sweeper (the grid of `-m a=1,2 b=x,y`), whose launcher runs only what a sweep still needs: rerun
with the same `hydra.sweep.dir`, it skips the points already FINISHED (src/sweeps/manifest.py). The project's default
sweeper: it takes the place of Hydra's own `basic` node in the ConfigStore (below).

Hydra composes each point three times before it trains (the sweeper checks the batch, the manifest hashes it, the
launcher runs it), ~0.1 s each: the sweeper hands its launcher a config loader that composes each point once and
gives every caller its own copy.
"""

from __future__ import annotations

import copy

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext


# Stored as `basic` itself, not as conf/hydra/sweeper/basic.yaml: a YAML named like a stored schema is matched against
# it (a deprecation warning in every multirun). Hydra runs every plugin module at each plugin scan, its own first and
# then hydra_plugins.*: this store always comes after Hydra's, so the default sweeper is this one.
# (A dict, not a dataclass: Hydra runs the module before it is in sys.modules. Fields as Hydra's BasicSweeperConf.)
ConfigStore.instance().store(group="hydra/sweeper", name="basic", provider="le5_sweep", node={
    "_target_": "hydra_plugins.le5_sweep.sweeper.ResumingSweeper", "max_batch_size": None, "params": None})


class ComposedOnce:
    """Hydra's config loader, with `load_sweep_config` composing each (master config, overrides) once."""

    def __init__(self, loader) -> None:
        self.loader, self.composed = loader, {}

    def __getattr__(self, name):  # everything else is the loader's own
        if name in ("loader", "composed"):  # not set yet: unpickling (submitit sends the launcher to each job)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def load_sweep_config(self, master_config, sweep_overrides):
        key = (id(master_config), tuple(sweep_overrides))
        if key not in self.composed:
            self.composed[key] = self.loader.load_sweep_config(master_config, list(sweep_overrides))
        return copy.deepcopy(self.composed[key])  # callers set the job's number and folders in theirs


class ResumingSweeper(BasicSweeper):
    def setup(self, *, hydra_context, task_function, config) -> None:
        from src.sweeps.launcher import ResumingLauncher

        hydra_context = HydraContext(config_loader=ComposedOnce(hydra_context.config_loader),
                                     callbacks=hydra_context.callbacks)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = ResumingLauncher(self.launcher, self)
