"""Runs grouped by what was trained, and each group's metrics aggregated: what a sweep's question needs.

One run per point cannot say which setting is better: seeds of one config move IMDB's test accuracy 0.8822-0.8841.
`group` puts together the runs that differ only in `seed` and in the settings that do not change what is trained
(src/overrides.py NOT_TRAINED), or, with `by`, the runs that share those keys' values; runs of different datasets
are always apart. `Group.stat` gives n, mean, std, min and max of one value over the runs that count (finished,
finite), and says how many were left out and why: a diverged run (NaN) is never averaged in silently.

Plain values only (no MLflow, no Keras): compare.py reads the store and hands each run over as a `Member`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from ..config import lower_is_better
from ..overrides import NOT_TRAINED, under

SEED = "seed"
DATASET = "dataset.name"
# Params that always differ between runs and say nothing about what was trained (besides NOT_TRAINED's).
NOT_COMPARED = ("tracking", "data_dir")


@dataclass
class Member:
    """One run as the groups see it: its params, whether it finished, and its values (metric name -> number;
    missing or NaN where the run has none)."""

    run_id: str
    params: dict
    finished: bool
    values: dict = field(default_factory=dict)

    def value(self, name: str) -> float:
        found = self.values.get(name)
        return float(found) if found is not None else math.nan


@dataclass
class Stat:
    """One value over a group: the runs that count (finished, finite) and the others, by reason."""

    values: list  # of the runs that count
    left_out: dict  # run id -> why ("nan", "missing", "FAILED"...)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """The sample standard deviation (0 for one run, NaN for none)."""
        if len(self.values) > 1:
            return statistics.stdev(self.values)
        return 0.0 if self.values else math.nan

    @property
    def min(self) -> float:
        return min(self.values) if self.values else math.nan

    @property
    def max(self) -> float:
        return max(self.values) if self.values else math.nan

    def text(self, digits: int = 4, spread: bool = False) -> str:
        """"0.1570 ± 0.0040", one run's "0.1570", with " [min-max]" when `spread`, and "(2 of 3: 1 nan)" when runs were
        left out; "-" when none counts and none was left out."""
        if not self.values:
            return f"- ({self._reasons()})" if self.left_out else "-"
        text = f"{self.mean:.{digits}f}"
        if self.n > 1:
            text += f" ± {self.std:.{digits}f}"
            if spread:
                text += f" [{self.min:.{digits}f}–{self.max:.{digits}f}]"
        if self.left_out:
            text += f" ({self.n} of {self.n + len(self.left_out)}: {self._reasons()})"
        return text

    def _reasons(self) -> str:
        counts: dict[str, int] = {}
        for why in self.left_out.values():
            counts[why] = counts.get(why, 0) + 1
        return ", ".join(f"{count} {why}" for why, count in sorted(counts.items()))


@dataclass
class Group:
    key: tuple  # ((param, value), ...): what its runs share, in the order of the grouping keys
    members: list

    @property
    def n(self) -> int:
        return len(self.members)

    def label(self, short=lambda k: k) -> str:
        return " ".join(f"{short(k)}={v}" for k, v in self.key) or "all runs"

    def stat(self, name: str) -> Stat:
        """`name` over the finished runs where it is finite; the others left out, with why."""
        values, left_out = [], {}
        for m in self.members:
            value = m.value(name)
            if not m.finished:
                left_out[m.run_id] = "not finished"
            elif name not in m.values or m.values[name] is None:
                left_out[m.run_id] = "missing"
            elif not math.isfinite(value):
                left_out[m.run_id] = str(value)  # nan, inf
            else:
                values.append(value)
        return Stat(values, left_out)


def compared(key: str) -> bool:
    """Whether a param tells what was trained (not where it was recorded, its data folder, or how much it printed)."""
    return not under(key, (*NOT_TRAINED, *NOT_COMPARED))


def varying(members: list[Member]) -> list[str]:
    """The params (those that tell what was trained) whose values differ between the runs, sorted."""
    keys = sorted({k for m in members for k in m.params if compared(k)})
    return [k for k in keys if len({m.params.get(k) for m in members}) > 1]


class UnknownKey(ValueError):
    """--by names a key that no run has; the message lists the keys that vary."""


def by_keys(members: list[Member], by: str) -> list[str]:
    """The params `by` stands for: itself, or the params inside it (`model` -> model.name, model.units...) that vary
    (all of them when none varies). Refused (UnknownKey) when no run has it."""
    present = sorted({k for m in members for k in m.params})
    if by in present:
        return [by]
    inside = [k for k in present if under(k, (by,))]
    if not inside:
        keys = [k for k in varying(members)]
        raise UnknownKey(f"--by {by}: no run has that setting. The settings that vary between these runs: "
                         f"{', '.join(keys) or '(none)'}.")
    changing = [k for k in inside if k in varying(members)]
    return changing or inside


def group(members: list[Member], by: list[str] | None = None) -> list[Group]:
    """Runs grouped by the values of `by` (None: every varying param but `seed`), in first-seen order. Runs of
    different datasets are never in one group (the dataset joins the key when it varies)."""
    keys = by if by is not None else [k for k in varying(members) if k != SEED]
    if DATASET not in keys and len({m.params.get(DATASET) for m in members}) > 1:
        keys = [DATASET, *keys]
    groups: dict[tuple, Group] = {}
    for m in members:
        key = tuple((k, m.params.get(k, "-")) for k in keys)
        groups.setdefault(key, Group(key, []))
        groups[key].members.append(m)
    return list(groups.values())


def repeated(groups: list[Group]) -> bool:
    """Whether any group holds more than one run (seeds repeated): only then is a table of groups worth printing."""
    return any(g.n > 1 for g in groups)


def ranked(groups: list[Group], objective: str, monitor: str) -> list[Group]:
    """The groups best first by the mean of `objective` (lower first when `monitor` is a loss); those where no run
    counts come last, in their order."""
    scored = [g for g in groups if g.stat(objective).n]
    rest = [g for g in groups if not g.stat(objective).n]
    sign = 1 if lower_is_better(monitor) else -1
    return sorted(scored, key=lambda g: sign * g.stat(objective).mean) + rest


def best_member(members: list[Member], objective: str, monitor: str) -> Member | None:
    """The best single finished run by `objective` (the first of equals), None when no finished run has it."""
    scored = [m for m in members if m.finished and math.isfinite(m.value(objective))]
    if not scored:
        return None
    sign = 1 if lower_is_better(monitor) else -1
    return min(scored, key=lambda m: sign * m.value(objective))


def datasets(members: list[Member]) -> list[str]:
    """The datasets of these runs (dataset.name), sorted; more than one deserves a warning."""
    return sorted({str(m.params.get(DATASET, "-")) for m in members})
