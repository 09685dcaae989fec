"""Hydra's basic sweeper (the grid of `-m a=1,2 b=x,y`), whose launcher runs only what a sweep still needs: rerun
with the same `hydra.sweep.dir`, it skips the points already FINISHED (src/manifest.py). The project's default
sweeper (conf/config.yaml)."""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class ResumingSweeper(BasicSweeper):
    def setup(self, *, hydra_context, task_function, config) -> None:
        from src.manifest import ResumingLauncher

        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = ResumingLauncher(self.launcher, self)
