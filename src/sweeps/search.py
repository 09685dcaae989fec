"""Optuna searches for `hydra/sweeper=optuna` (hydra_plugins/le5_optuna): the search space, the study, the trials.

    python -m src.train -m hydra/sweeper=optuna +experiment=mnist_optuna

The driver (`Search`, run by the Hydra sweeper) asks the study for a trial, launches one Hydra job for it through
the configured launcher (basic: in this process; slurm: a SLURM job) with job number = trial number, and tells the
study the job's result. The job (`JobTrial`, in src/train.py) finds its trial from the sweep folder and its job
number, reports `trainer.monitor` after every epoch and stops at the end of an epoch the pruner prunes.

The study lives in `<sweep dir>/optuna_journal.log`: Optuna's JournalStorage on a journal file, which needs only
appends and an atomic link(2) for its lock (JournalFileSymlinkLock: NFSv2 and later), so jobs on other nodes of a
shared filesystem write to it safely. SQLite relies on POSIX byte-range locks, which NFS implements unreliably
(SQLite's own FAQ warns against it): concurrent trials could corrupt the database.

This module does not train: it never imports Keras, and Optuna only when a search runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..paths import CHECKPOINT_STATE
from ..tracking import names
from ..config import lower_is_better
from ..errors import UserError
from .manifest import BACKUP_OVERRIDE

log = logging.getLogger(__name__)

SWEEPER_TARGET = "hydra_plugins.le5_optuna.sweeper.OptunaSweeper"
STUDY_FILE = "optuna_study.json"  # what jobs need to find the study: storage, name, pruner
JOURNAL_FILE = "optuna_journal.log"
STUDY_NAME = "sweep"  # one study per sweep folder
SUMMARY_FILE = "optuna_summary.md"
PRUNED_AT = "pruned_at_epoch"  # a trial's user attribute, set by its job when the pruner stops it
REPEAT_OF = "repeat_of"  # a trial's user attribute: the sampler proposed that earlier trial's point again
BACKUP = "backup_dir"  # a trial's user attribute, set by its job: its checkpoint folder
CONTINUES = "continues"  # a trial's user attribute: it retries that killed trial, continuing its run from its checkpoint


class SearchError(UserError, ValueError):
    """The sweeper's configuration cannot run; the message names the fix."""


def _tpe(seed):
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


def _random(seed):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _median(settings: dict):
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=settings["n_startup_trials"],
                                       n_warmup_steps=settings["n_warmup_steps"])


def _asha(settings: dict):
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=settings["min_resource"],
                                                  reduction_factor=settings["reduction_factor"])


def _no_pruner(settings: dict):
    import optuna

    return optuna.pruners.NopPruner()


SAMPLERS = {"tpe": _tpe, "random": _random}
PRUNERS = {"median": _median, "successive_halving": _asha, "none": _no_pruner}
PRUNER_SETTINGS = ("n_startup_trials", "n_warmup_steps", "min_resource", "reduction_factor")


def sampler_seed(seed: int | None, trials: int) -> int | None:
    """The sampler's seed for a study that holds `trials` trials: `seed` itself for a new study, another seed (from
    both) for each resumption."""
    if seed is None or trials == 0:
        return seed
    return int(np.random.SeedSequence([seed, trials]).generate_state(1)[0])


def build_sampler(name: str, seed: int | None):
    if name not in SAMPLERS:
        raise SearchError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}. Fix: hydra.sweeper.sampler=tpe")
    return SAMPLERS[name](seed)


def build_pruner(name: str, settings: dict):
    """Optuna's pruner `name` with its arguments from `settings` (the sweeper's n_startup_trials, ...)."""
    if name not in PRUNERS:
        raise SearchError(f"unknown pruner {name!r}; choose from {sorted(PRUNERS)}. Fix: hydra.sweeper.pruner=median")
    try:
        return PRUNERS[name](settings)
    except ValueError as err:  # a value Optuna refuses
        raise SearchError(f"hydra.sweeper.pruner={name}: {err}.\n  Fix: change that setting of hydra.sweeper "
                          f"({', '.join(PRUNER_SETTINGS)})") from err


def pruner_settings(sweeper: DictConfig) -> dict:
    return {key: sweeper[key] for key in PRUNER_SETTINGS}


@dataclass
class Space:
    """The search: Optuna distributions by override key, and the overrides every trial gets as they are."""

    distributions: dict = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    def overrides(self, params: dict) -> list[str]:
        return [*self.fixed, *(f"{key}={value}" for key, value in params.items())]

    def points(self, limit: int = 100_000) -> list[dict] | None:
        """Every point of a space of finite choices only (choices, int ranges, stepped floats), in order; None for a
        continuous one or one of more than `limit` points."""
        import itertools

        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        values = []
        for d in self.distributions.values():
            if isinstance(d, CategoricalDistribution):
                values.append(list(d.choices))
            elif isinstance(d, IntDistribution):  # step 1 when log
                values.append(list(range(d.low, d.high + 1, d.step)))
            elif isinstance(d, FloatDistribution) and d.step is not None:
                values.append([d.low + i * d.step for i in range(round((d.high - d.low) / d.step) + 1)])
            else:
                return None
        if math.prod(len(v) for v in values) > limit:
            return None
        return [dict(zip(self.distributions, combo)) for combo in itertools.product(*values)]


def space(params: dict, arguments: list[str]) -> Space:
    """The search space of `hydra.sweeper.params` and the command line's sweep overrides (which win), in
    hydra-optuna-sweeper's syntax: interval(a, b) (float, or int when both ends are), tag(log, interval(a, b)),
    choice(x, y, ...) or x,y,... (categorical), range(start, stop[, step]); any other override is fixed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    parser = OverridesParser.create()
    found = Space()
    by_key = {}
    for line in lines:
        try:
            [override] = parser.parse_overrides([line])
        except HydraException as err:
            raise SearchError(f"the search space entry {line!r} is not Hydra override syntax: {err}\n  "
                              "Fix: write it as interval(1e-4, 1e-1), tag(log, interval(1e-4, 1e-1)), "
                              "choice(64, 128), range(1, 5) or a fixed value") from None
        by_key[override.get_key_element()] = (line, override)
    for key, (line, override) in by_key.items():
        if not override.is_sweep_override():
            found.fixed.append(f"{key}={override.get_value_element_as_str()}")
            continue
        try:
            found.distributions[key] = _distribution(override)
        except (ValueError, TypeError, NotImplementedError) as err:
            raise SearchError(f"the search space entry {line!r} cannot be sampled: {err}\n  "
                              "Fix: a low end below the high end, a positive low end with tag(log, ...)") from None
    return found


def _distribution(override):
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop - 1), step=int(value.step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    raise NotImplementedError(f"{type(value).__name__} is not supported by the Optuna sweeper")


def check(config: DictConfig, arguments: list[str] | None = None) -> Space:
    """Refuse, before anything starts or is recorded, a sweeper configuration that cannot run; return its space."""
    s = config.hydra.sweeper
    problems = []
    if s.n_trials < 1:
        problems.append(f"hydra.sweeper.n_trials={s.n_trials}: must be >= 1 (trials to finish). "
                        "Fix: e.g. hydra.sweeper.n_trials=20")
    if s.n_jobs < 1:
        problems.append(f"hydra.sweeper.n_jobs={s.n_jobs}: must be >= 1 (trials in flight at once). "
                        "Fix: hydra.sweeper.n_jobs=1")
    for build in (lambda: build_sampler(s.sampler, 0), lambda: build_pruner(s.pruner, pruner_settings(s))):
        try:
            build()
        except SearchError as err:
            problems.append(str(err))
    found = Space()
    try:
        found = space(_plain(s.params), list(arguments if arguments is not None else config.hydra.overrides.task))
    except SearchError as err:
        problems.append(str(err))
    if not found.distributions and not any("search space" in p for p in problems):
        problems.append("nothing to search: no sweep in hydra.sweeper.params or on the command line.\n"
                        "  Fix: e.g. hydra.sweeper.params.optimizer.learning_rate='tag(log, interval(1e-4, 1e-1))'")
    choices = OmegaConf.select(config, "hydra.runtime.choices", default={}) or {}
    absent = object()
    for key in found.distributions:
        if key.startswith(("+", "~")) or key in choices or "/" in key:
            continue
        if OmegaConf.select(config, key, default=absent, throw_on_missing=False) is absent:
            problems.append(f"{key}: no such key in the configuration.\n  Fix: spell it as "
                            f"`python -m src.train --cfg job` prints it, or write +{key} to add a key")
    if problems:
        raise SearchError("the Optuna sweep cannot run:\n  " + "\n  ".join(problems))
    return found


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


class SweepCheck(Callback):
    """Hydra callback (conf/config.yaml), before the MLflow sweep's: an Optuna sweep that cannot run is refused
    before its parent run, its study or any job exists (Hydra would only warn about a sweeper's exception
    after the parent run started)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if OmegaConf.select(config, "hydra.sweeper._target_") != SWEEPER_TARGET:
            return
        try:
            check(config)
        except SearchError as err:
            print(f"Error: {err}", file=sys.stderr)
            sys.exit(2)


# -- the study's storage, shared by the driver and its jobs --------------------------------------------------------


def repair_journal(path: Path) -> str | None:
    """Set aside a last record that a crash cut short, before the study is opened; returns the line to log.

    Optuna appends each record whole (one line, fsync) under its lock, so only the last line can be torn; it was
    never committed, and a later append would glue to it, making the journal unreadable. It moves to
    `<journal>.torn` (kept, appended to). A bad line anywhere else is damage Optuna's writes cannot cause: refused,
    naming the line and how to keep the records before it."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    lines = data.split(b"\n")  # a whole journal ends with "\n": its last piece is b""
    for number, line in enumerate(lines[:-1], start=1):
        try:
            json.loads(line)
        except ValueError:
            if number == len(lines) - 1 and not lines[-1]:
                break  # the last line, newline and all, is torn (a record cut inside a multi-byte write)
            raise SearchError(
                f"{path}, line {number} of {len(lines) - 1}, is not a journal record: the study cannot be read.\n"
                f"  Fix: keep the {number - 1} records before it (they hold the trials up to there): "
                f"mv {path} {path}.damaged && head -n {number - 1} {path}.damaged > {path}; or a new hydra.sweep.dir"
            ) from None
    else:
        if not lines[-1]:
            return None  # every line whole
        number = len(lines)
    good = b"\n".join(lines[: number - 1]) + (b"\n" if number > 1 else b"")
    torn = data[len(good):]
    with open(f"{path}.torn", "ab") as f:
        f.write(torn if torn.endswith(b"\n") else torn + b"\n")
    with open(path, "r+b") as f:
        f.truncate(len(good))
        os.fsync(f.fileno())
    return (f"The study's journal ended in a record cut short by a crash ({len(torn)} bytes, never committed): set "
            f"aside in {path}.torn; the study resumes from its {number - 1} whole records.")


def storage(sweep_dir: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    path = str(Path(sweep_dir) / JOURNAL_FILE)
    # link(2)-based lock: atomic on NFSv2 and later; a lock left by a killed process is broken after grace_period s
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileSymlinkLock(path, grace_period=30)))


# -- the driver ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refill:
    """A study's side of trials trained together (hydra/launcher=fused): `ask()` gives the next trial's (job
    overrides, job number) for a freed slot, or None when the study has asked all it may; `done(job number,
    JobReturn)` tells the trial as soon as its job ends."""

    ask: Callable[[], tuple[list[str], int] | None]
    done: Callable[[int, object], None]


class Search:
    """The trial loop of one sweep folder: ask, launch one job, tell; up to n_jobs trials in flight."""

    def __init__(self, config: DictConfig, launch, in_process: bool, arguments: list[str] | None = None,
                 launch_together=None):
        """`launch(overrides, job_num)` runs one Hydra job and returns its JobReturn; `in_process`: the launcher
        runs jobs in this process (Hydra's basic launcher), so they cannot run concurrently; `arguments`: the
        command line's overrides (default: the config's). `launch_together([(overrides, job_num), ...], refill)`, where the
        launcher trains jobs together (hydra/launcher=fused): n_jobs trials are asked at once and trained in one
        program, each freed slot refilled by a newly asked trial (`Refill`); each job reports its epochs to its
        trial, as alone."""
        import optuna

        s = config.hydra.sweeper
        self.config = config
        self.space = check(config, arguments)
        self.monitor = config.trainer.monitor
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self.n_trials = s.n_trials
        self.n_jobs = s.n_jobs
        self.launch_together = launch_together
        if in_process and self.n_jobs > 1 and launch_together is None:
            log.warning("hydra.sweeper.n_jobs=%d: the basic launcher runs jobs in this process, one at a time; "
                        "use hydra/launcher=slurm for trials in parallel", self.n_jobs)
            self.n_jobs = 1
        self.launch = launch
        seed = config.seed if s.seed is None else s.seed
        self.seed = seed
        self._points = self.space.points()
        pruner = {"name": s.pruner, "settings": pruner_settings(s)}
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # this module logs each trial itself
        if repaired := repair_journal(self.sweep_dir / JOURNAL_FILE):  # the driver, before any job opens it
            log.warning(repaired)
        self.storage = storage(self.sweep_dir)
        self.study = optuna.create_study(
            storage=self.storage,
            study_name=STUDY_NAME,
            direction="minimize" if lower_is_better(self.monitor) else "maximize",
            sampler=build_sampler(s.sampler, seed),
            pruner=build_pruner(pruner["name"], pruner["settings"]),
            load_if_exists=True,  # the same sweep folder again: continue its study
        )
        before = self.study.user_attrs.get("monitor", self.monitor)
        if before != self.monitor:  # load_if_exists keeps the stored direction: refuse a silent mix
            raise SearchError(f"the study in {self.sweep_dir} optimises {before}, not trainer.monitor={self.monitor}.\n"
                              f"  Fix: trainer.monitor={before} to continue it, or a new hydra.sweep.dir")
        # A resumed study must not replay its sampler's sequence from the start (a sampler seeded alike at each driver
        # start proposes its first trials' points again): the seed goes with the trials already in the study, so a
        # fresh folder reproduces a study and a rerun continues with points it never proposed.
        self.study.sampler = build_sampler(s.sampler, sampler_seed(seed, len(self.study.trials)))
        self.study.set_user_attr("monitor", self.monitor)
        self.study.set_user_attr("epochs", int(config.trainer.epochs))
        (self.sweep_dir / STUDY_FILE).write_text(json.dumps({"study_name": STUDY_NAME, "journal": JOURNAL_FILE,
                                                             "pruner": pruner, "monitor": self.monitor}))
        self._lock = threading.Lock()  # one thread tells or asks the study at a time

    def run(self) -> list:
        """Run the trials the study still lacks; return the JobReturns of those launched."""
        import optuna
        from optuna.trial import TrialState

        self._end_stale()
        finished = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        # Failed trials do not count towards n_trials (a rerun retries them), but one invocation never launches
        # more than it lacks: a search whose every trial fails ends.
        to_launch = max(self.n_trials - finished, 0)
        if to_launch == 0:
            best = self.study.best_trial if any(t.state == TrialState.COMPLETE for t in self.study.trials) else None
            log.info("The study is complete: %d trials finished, hydra.sweeper.n_trials=%d.%s To grow it, rerun the "
                     "same command with a larger hydra.sweeper.n_trials", finished, self.n_trials,
                     f" Best: trial {best.number}, {self.monitor} {best.value:.4f}, {best.params}."
                     if best else "")
            return []
        log.info("Optuna study %s: %d of %d trials finished, launching %d (%d at a time), direction %s %s",
                 self.sweep_dir / JOURNAL_FILE, finished, self.n_trials, to_launch, self.n_jobs,
                 self.study.direction.name.lower(), self.monitor)
        if self.launch_together is not None:
            return self._run_together(to_launch)
        if self.n_jobs == 1:  # in this (the main) thread: Ctrl-C and SIGTERM reach an in-process job's run
            return [r for r in (self._tell(*self._start()) for _ in range(to_launch)) if r is not None]
        returns: list = []
        running: dict[Future, optuna.trial.Trial] = {}
        launched = 0
        with ThreadPoolExecutor(self.n_jobs, thread_name_prefix="trial") as pool:
            while launched < to_launch or running:
                while launched < to_launch and len(running) < self.n_jobs:  # a free slot starts the next trial
                    trial, future = self._start(pool)
                    running[future] = trial
                    launched += 1
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    returns.append(self._tell(running.pop(future), future))
        return [r for r in returns if r is not None]

    def _run_together(self, to_launch: int) -> list:
        """n_jobs trials asked at once and trained together; as each member ends (its last epoch, early stopping, its
        pruner, a failure) its trial is told and a newly asked trial takes its slot in the same program, until
        `to_launch` trials were asked. In this (the main) thread."""
        returns: list = []
        asked: dict[int, object] = {}  # job number (= trial number) -> trial, until told

        def ask():
            if len(returns) + len(asked) >= to_launch:
                return None
            with self._lock:
                trial = self._ask()
            asked[trial.number] = trial
            return self._overrides(trial), trial.number

        def done(num: int, result) -> None:
            future = Future()
            future.set_result(result)
            returns.append(self._tell(asked.pop(num), future))

        while len(returns) < to_launch:
            batch = [ask() for _ in range(min(self.n_jobs, to_launch - len(returns)))]
            try:
                self.launch_together(batch, Refill(ask, done))
                error = RuntimeError("the fused launcher ended without this trial's job")
            except Exception as err:  # KeyboardInterrupt and SystemExit stop the sweep
                error = err
            for num in list(asked):  # asked and never ended by the launch
                future = Future()
                future.set_exception(error)
                returns.append(self._tell(asked.pop(num), future))
        return [r for r in returns if r is not None]

    def _start(self, pool: ThreadPoolExecutor | None = None):
        """Ask for a trial and launch its job: in `pool`, or here, waiting for it. Returns the trial and a Future."""
        with self._lock:
            trial = self._ask()
        overrides = self._overrides(trial)
        if pool is not None:
            return trial, pool.submit(self.launch, overrides, trial.number)
        future = Future()
        try:
            future.set_result(self.launch(overrides, trial.number))
        except Exception as err:  # KeyboardInterrupt and SystemExit stop the sweep
            future.set_exception(err)
        return trial, future

    def _overrides(self, trial) -> list[str]:
        """The trial's job overrides, its sampled ones logged."""
        overrides = self.space.overrides(trial.params)
        if CONTINUES in trial.user_attrs:  # its job resumes the killed trial's checkpoint, and so its run
            overrides.append(f"{BACKUP_OVERRIDE}={trial.user_attrs[BACKUP]}")
        log.info("Trial %d: %s", trial.number, " ".join(overrides[len(self.space.fixed):]))
        return overrides

    def _ask(self):
        """The next trial. In a space of finite choices no point is trained twice while untried ones remain: a
        sampler's repeat (TPE and random sampling draw choices again, and a resumed study's sampler knows nothing of
        its earlier draws) is told FAIL untrained (user attr `repeat_of`) and an untried point, drawn with the
        study's seed, is asked instead."""
        from optuna.trial import TrialState

        trial = self.study.ask(self.space.distributions)
        points = self._points
        if points is None:
            return trial
        taken = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                TrialState.RUNNING)):
            if t.number != trial.number:
                taken.setdefault(_key(t.params), t.number)
        if (earlier := taken.get(_key(trial.params))) is None:
            return trial
        untried = [p for p in points if _key(p) not in taken]
        if not untried:
            return trial  # every point tried: a repeat is the sampler's choice to make
        pick = untried[np.random.default_rng([self.seed, trial.number]).integers(len(untried))]
        trial.set_user_attr(REPEAT_OF, earlier)
        self.study.tell(trial, state=TrialState.FAIL)
        self.study.enqueue_trial(pick)
        log.info("Trial %d: the sampler proposed trial %d's point again: not trained (FAIL, %s); one of the %d "
                 "untried points instead", trial.number, earlier, REPEAT_OF, len(untried))
        return self.study.ask(self.space.distributions)

    def _end_stale(self) -> None:
        """Trials left RUNNING belong to a driver that died (this folder has one driver at a time): FAIL them, so
        they are retried."""
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            self.study.tell(trial.number, state=TrialState.FAIL)
            folder = trial.user_attrs.get(BACKUP)
            continued = bool(folder) and (Path(folder) / CHECKPOINT_STATE).is_file()  # its job got as far as its run
            self.study.enqueue_trial(trial.params,  # the next trial asked
                                     user_attrs={CONTINUES: trial.number, BACKUP: folder} if continued else None)
            log.warning("Trial %d was left running by a previous driver: marked FAIL, its point is tried again%s",
                        trial.number, f", continuing its run from the checkpoint in {folder}" if continued else "")

    def _tell(self, trial, future: Future):
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        try:
            result = future.result()
        except Exception as err:  # the launcher lost the job (a SLURM job killed, out of memory)
            log.error("Trial %d: its job did not return (%s: %s)", trial.number, type(err).__name__, err)
            result, state, value = None, TrialState.FAIL, None
        else:
            if result.status == JobStatus.FAILED:
                state, value = TrialState.FAIL, None
                log.error("Trial %d failed: %s", trial.number, result._return_value)
            elif PRUNED_AT in self._stored(trial.number).user_attrs:  # the job set it
                state, value = TrialState.PRUNED, None
            else:
                state, value = TrialState.COMPLETE, float(result.return_value)
                if not math.isfinite(value):
                    state, value = TrialState.FAIL, None
        with self._lock:
            frozen = self.study.tell(trial, value, state=state, skip_if_finished=True)
        epochs = len(frozen.intermediate_values)
        log.info("Trial %d %s after %d epoch(s)%s", trial.number, frozen.state.name, epochs,
                 f": {self.monitor} {value:.4f}" if value is not None else "")
        return result

    def _stored(self, number: int):
        """The trial as its job left it in the storage (a Trial object keeps what it saw when asked)."""
        study_id = self.storage.get_study_id_from_name(STUDY_NAME)
        return self.storage.get_trial(self.storage.get_trial_id_from_study_id_trial_number(study_id, number))

    def finish(self) -> str:
        """The study's summary: logged, written to the sweep folder and, with the sweep's MLflow parent run, put
        on it with the best trial's tags and Optuna's plots. Returns the summary."""
        text = summary(self.study, self.n_trials)
        (self.sweep_dir / SUMMARY_FILE).write_text(text)
        log.info("Optuna study summary:\n%s", text)
        record = self.sweep_dir / "mlflow_parent.json"  # src/sweeps/sweep.py's PARENT_FILE (sweep imports MLflow)
        if record.exists():
            _record_on_parent(self.study, json.loads(record.read_text()), text, self.monitor)
        return text


def summary(study, n_trials: int) -> str:
    """A Markdown table of the trials and the compute pruning saved (epochs run against every trial's epochs)."""
    from optuna.trial import TrialState

    from ..report.tables import markdown_table

    trials = study.get_trials(deepcopy=False)
    epochs = study.user_attrs.get("epochs")
    monitor = study.user_attrs.get("monitor", "value")
    keys = sorted({k for t in trials for k in t.params})
    rows = [[str(t.number), f"{t.state.name} (repeat of {t.user_attrs[REPEAT_OF]})" if REPEAT_OF in t.user_attrs
             else t.state.name, *(_short(t.params.get(k, "")) for k in keys),
             f"{t.value:.4f}" if t.value is not None else "", str(len(t.intermediate_values)),
             str(t.user_attrs.get(PRUNED_AT, ""))] for t in trials]
    # pruning's saving, over the trials that ended (complete or pruned): a failed or unfinished one saved nothing
    ended = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    ran = sum(len(t.intermediate_values) for t in ended)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    lines = [f"# Optuna study: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
             f"n_trials={n_trials}, {study.direction.name.lower()} {monitor}", "",
             markdown_table(["trial", "state", *keys, monitor, "epochs", "pruned at"], rows), ""]
    if epochs and ended:
        full = len(ended) * epochs
        lines.append(f"Epochs run: {ran} of {full} (complete and pruned trials x trainer.epochs = {len(ended)} x "
                     f"{epochs}): pruning saved {1 - ran / full:.0%}")
    try:
        best = study.best_trial
        params = " ".join(f"{k}={_short(v)}" for k, v in best.params.items())
        lines.append(f"Best trial: {best.number} ({params}), {monitor} = {best.value:.4f}")
    except ValueError:
        lines.append("No trial completed.")
    return "\n".join(lines) + "\n"


def _key(params: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _record_on_parent(study, parent: dict, text: str, monitor: str) -> None:
    """The best trial (tags), the summary and Optuna's matplotlib plots on the sweep's MLflow parent run."""
    import tempfile

    import optuna
    from mlflow.tracking import MlflowClient

    client = MlflowClient(parent["tracking_uri"])
    run_id = parent["run_id"]
    client.log_text(run_id, text, f"optuna/{SUMMARY_FILE}")
    tags = {names.OPTUNA_TRIALS: str(len(study.trials))}
    try:
        best = study.best_trial
        tags.update({names.OPTUNA_BEST_TRIAL: str(best.number), f"{names.OPTUNA_BEST_VALUE}.{monitor}": str(best.value),
                     names.OPTUNA_BEST_PARAMS: json.dumps(best.params)})
    except ValueError:  # no trial completed
        best = None
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if best is None:
        return
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    from optuna.visualization import matplotlib as plots

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in (("optimization_history", plots.plot_optimization_history),
                           ("param_importances", plots.plot_param_importances)):
            try:
                axes = plot(study)
            except Exception as err:  # importances need 2+ completed trials with varied params
                log.warning("No %s plot: %s", name, err)
                continue
            axes.figure.savefig(f"{tmp}/{name}.png", bbox_inches="tight", dpi=100)
            matplotlib.pyplot.close(axes.figure)
            client.log_artifact(run_id, f"{tmp}/{name}.png", "optuna")


# -- a job's side ----------------------------------------------------------------------------------------------------


class JobTrial:
    """The Optuna trial of a sweep's job: `report` each epoch's monitor; it says when the pruner stops the job."""

    def __init__(self, sweep_dir: Path, number: int):
        import optuna

        record = json.loads((Path(sweep_dir) / STUDY_FILE).read_text())
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        stored = storage(sweep_dir)
        self.study = optuna.load_study(study_name=record["study_name"], storage=stored,
                                       pruner=build_pruner(record["pruner"]["name"], record["pruner"]["settings"]))
        study_id = stored.get_study_id_from_name(record["study_name"])
        trial_id = stored.get_trial_id_from_study_id_trial_number(study_id, number)
        self.trial = optuna.trial.Trial(self.study, trial_id)
        self._stored = lambda: stored.get_trial(trial_id)  # as the storage has it now (Trial caches what it saw)
        self.monitor = record.get("monitor")
        self.number = number
        self.pruned_at: int | None = None
        self._reporting = True

    @classmethod
    def of_job(cls, sweep_dir: Path | None, job_num: int | None) -> JobTrial | None:
        """The trial of a multirun job of an Optuna sweep, else None."""
        if sweep_dir is None or job_num is None or not (Path(sweep_dir) / STUDY_FILE).exists():
            return None
        return cls(Path(sweep_dir), job_num)

    def tags(self) -> dict[str, str]:
        continues = self.trial.user_attrs.get(CONTINUES)
        return {names.OPTUNA_TRIAL: str(self.number),
                **({names.OPTUNA_CONTINUES: str(continues)} if continues is not None else {}),
                **{f"{names.OPTUNA_PARAM}.{k}": _short(v) for k, v in self.trial.params.items()}}

    def starts(self, backup_folder: Path, epochs: list[dict]) -> None:
        """Its job starts with the checkpoint in `backup_folder`, holding `epochs` (their logs): the folder is kept on
        the trial, for a rerun to continue the run from it if the driver dies (Search._end_stale), and each of those
        epochs the trial was not told yet is reported now (a retried trial continuing a killed one's run)."""
        self.trial.set_user_attr(BACKUP, str(backup_folder))
        told = self._stored().intermediate_values
        for epoch, logs in enumerate(epochs, start=1):
            if epoch not in told and self.monitor in logs:
                self.report(epoch, logs[self.monitor], may_prune=False)

    def report(self, epoch: int, value: float, may_prune: bool = True) -> bool:
        """Report the monitor after `epoch` (counted from 1); True: the pruner stops the trial here (never when
        not `may_prune`: after the last epoch)."""
        import optuna

        if not self._reporting:
            return False
        try:
            self.trial.report(value, epoch)
            if not may_prune or not self.trial.should_prune():
                return False
            self.trial.set_user_attr(PRUNED_AT, epoch)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError) as err:
            # the driver ended the trial (it died and a rerun marked it FAIL): train on, unreported
            log.warning("Trial %d no longer takes reports (%s); training on", self.number, err)
            self._reporting = False
            return False
        self.pruned_at = epoch
        log.info("Trial %d pruned after epoch %d (%s)", self.number, epoch, type(self.study.pruner).__name__)
        return True
