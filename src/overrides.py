"""Hydra overrides as this project reads them, and the one list of settings that do not change what is trained.

An override is `key=value`, with Hydra's prefixes `+key=` (add), `++key=` (add or replace) and `~key` (delete).
Every place that asks "which key does this override set?" (run names, resume commands, a sweep's varied keys)
asks `key`, so `++trainer.backup_dir=...` is the same key as `trainer.backup_dir=...`. Imports nothing of the
project.
"""

from __future__ import annotations

import shlex
import sys

# Settings that say where a run is recorded, where its checkpoint goes, or how much it prints: never what it trains.
# A sweep's point hash leaves them out (a rerun into another store is the same point), run names leave them out,
# and fused members may differ in them. `data_dir` is not one of them: with dataset.sha256=null, another folder can
# hold other data (a sweep over data_dir has a point per folder).
NOT_TRAINED = ("tracking", "trainer.backup_dir", "trainer.verbose")


def key(override: str) -> str:
    """The dotted key an override sets: `++trainer.backup_dir=/x` -> `trainer.backup_dir`; `~seed` -> `seed`."""
    return override.lstrip("+~").split("=", 1)[0]


def under(name: str, keys) -> bool:
    """Whether the dotted key `name` is one of `keys` or inside one of them (`tracking.tracking_uri` in tracking)."""
    return any(name == k or name.startswith(f"{k}.") for k in keys)


def without(overrides: list[str], keys) -> list[str]:
    """`overrides` less those that set one of `keys` (or a key inside one), with any prefix."""
    return [o for o in overrides if not under(key(o), keys)]


def train_command(overrides: list[str], *, multirun: bool = False) -> str:
    """The shell command that runs `python -m src.train` with `overrides`, quoted as a shell needs.

    It starts with this interpreter's path: a bare `python` outside the activated venv has no Hydra."""
    return shlex.join([sys.executable, "-m", "src.train", *(["-m"] if multirun else []), *overrides])
