"""hydra/launcher=fused (JAX): a sweep's points trained together as one compiled program, each its own MLflow run.

    python -m src.train -m hydra/launcher=fused backend=jax optimizer.learning_rate=1e-3,3e-3 seed=1,2

The launcher (hydra_plugins/le5_fused) composes every point of the sweep, then:
1. groups the points that can share one program (`plan`): equal configs except in what each member can carry in
   its own Keras variables (VARIES: its seed, i.e. initial weights, data order and Dropout masks; its learning
   rate, an optimizer variable) or on the host (its early-stopping patience and monitor, its checkpoint folder).
   Values Keras keeps as Python floats (model.rate, model.l2, optimizer.momentum) are fixed when the program is
   compiled: points differing in them are separate groups. The log says how the sweep was grouped and why.
2. sets up each member's run as `src.train.train` does (its own MLflow child run under the sweep's parent, tags,
   params, dataset inputs, checkpoint folder; a point given `trainer.backup_dir`, as src/sweeps/manifest.py does for a
   point to resume, continues its run from its checkpoint) and builds its model under its own seed, as a lone run;
   the group's program compiles on a background thread meanwhile, from the first member's shapes;
3. trains each group with src/fused/vmapped.py (one compiled call per epoch: `lax.scan` over batches of `jax.vmap` over
   members, on a CPU a few members at a time (`vmap_members`); the data on the device once), a group of one
   included; the group is split when its members' parameters and optimizer state do not fit
   hardware.device_data_budget beside the data (said in the log);
4. per epoch, on the host: one transfer of the members' logs; per member its MLflow metrics (step = epoch),
   NaN (that member's run fails, the others go on), Keras's EarlyStopping (a stopped member is frozen); its
   checkpoint and metrics are written by the sender thread (`HostWork`), off the training loop;
5. ends each member as Hydra's own job (hydra.core.utils.run_job: its output folder, .hydra files, JobReturn):
   test metrics, objective, predictions, history plot (drawn by worker processes meanwhile: `plots.Workers`), config,
   logged model, run FINISHED (or FAILED).

Under hydra/sweeper=optuna (a `refill` from src/sweeps/search.py), a member that stops is ended at that epoch's end
and its trial told; a newly asked trial of the group's shape takes its slot and trains from its own epoch 0 (one
of another shape waits for a group of its shape), until the study has asked its trials (docs/optuna.md).

Ctrl-C / SIGTERM ends every open member's run KILLED after its last finished epoch is checkpointed and logged;
rerunning the sweep's command (same hydra.sweep.dir) skips FINISHED points and resumes the others, each into
its own run (src/sweeps/manifest.py gives each such point its `trainer.backup_dir`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .. import overrides as ov
from ..config import Backend, ConfigError, Loop, Strategy
from ..sweeps import search
from ..tracking import names, status

log = logging.getLogger(__name__)

LAUNCHER_TARGET = "hydra_plugins.le5_fused.launcher.FusedLauncher"
SWEEPER_TARGET = "hydra_plugins.le5_sweep.sweeper.ResumingSweeper"  # the grid sweeper (hydra_plugins/le5_sweep/sweeper.py)
# What members of one group may differ in: carried per member in Keras variables (seed: initial weights, data
# order, Dropout's seed state; the learning rate: an optimizer variable), or used on the host only.
# The settings that do not change what is trained differ freely too.
VARIES = (*ov.NOT_TRAINED, "seed", "optimizer.learning_rate", "trainer.early_stopping_patience", "trainer.monitor")
# Keras keeps these as Python floats, fixed when the program is compiled: a reason for a separate group.
TRACE_TIME = {"model.rate": "Dropout's rate", "model.l2": "the L2 factor", "optimizer.momentum": "SGD's momentum",
              "optimizer.nesterov": "SGD's nesterov"}
# A member's state on the device, in copies of its parameters and optimizer variables: the state, the next one
# during the epoch, the best epoch's (early stopping), the one the writer thread still holds.
MEMBER_COPIES = 4
# On a CPU, how much member state (parameters and optimizer variables) one vmapped step may carry: one member
# already keeps the cores busy, and members beyond this stream their state from memory at every step instead of
# the cache (16 mnist_dense members at once: 0.78 s per member-epoch; 4 at a time: 0.68 s, as alone).
CPU_VMAP_BYTES = 16 * 2**20


# ---------------------------------------------------------------------------------------------------------------
# Refusals, before any job starts (no Keras)


def check(cfg) -> None:
    """Refuse a config the fused launcher cannot train, with the fix."""
    from ..training import backend

    chosen, why = backend.choose(cfg.backend)
    if chosen != Backend.jax:
        raise ConfigError(
            f"hydra/launcher=fused trains on JAX, but this sweep uses backend={chosen.value} ({why}).\n"
            "Fix: add backend=jax (pip install jax; jax[cuda12] on GPU nodes), or leave out hydra/launcher=fused."
        )
    if Loop(cfg.trainer.loop) == Loop.fit:
        raise ConfigError(
            "hydra/launcher=fused trains compiled epochs, but this sweep asks for trainer.loop=fit.\n"
            "Fix: leave trainer.loop at auto (the default: the fused loop under this launcher), or drop "
            "hydra/launcher=fused to train each point with Keras fit."
        )
    if Strategy(cfg.hardware.strategy) != Strategy.default:
        raise ConfigError(
            "hydra/launcher=fused trains on one device, but hardware.strategy=mirrored asks for several.\n"
            "Fix: hardware=gpu (one GPU) or hardware=auto, or drop hydra/launcher=fused for multi-GPU training."
        )


def check_study(config) -> None:
    """Refuse an Optuna search space that a fused study cannot train together: a continuous range of a setting fixed
    when the program is compiled (or that shapes it) would make every trial a group of its own, compiled alone."""
    try:
        space = search.check(config)
    except search.SearchError:
        return  # src.sweeps.search.SweepCheck refuses it, with its fix
    continuous = sorted(key for key, distribution in space.distributions.items()
                        if not ov.under(key, VARIES) and type(distribution).__name__ == "FloatDistribution")
    if continuous:
        raise ConfigError(
            f"hydra/launcher=fused trains a study's trials together in groups of equal {', '.join(continuous)}, but "
            f"the search space samples {'it' if len(continuous) == 1 else 'them'} from a continuous range: every trial "
            "would be a group of its own, compiled alone.\n"
            f"Fix: search {continuous[0]} over a few values (hydra.sweeper.params: choice(...)), or drop "
            "hydra/launcher=fused for this study. What each member carries may stay continuous: "
            "optimizer.learning_rate, seed."
        )


def _refuse(err: Exception) -> None:
    print(f"Error: {err}", file=sys.stderr)
    sys.exit(2)


class LaunchCheck(Callback):
    """Hydra callback (conf/config.yaml), before the MLflow sweep's: a fused sweep that cannot run is refused
    before its parent run exists. (Points that a sweep override makes unfit are refused by the launcher, before
    any of them starts.)"""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if OmegaConf.select(config, "hydra.launcher._target_") != LAUNCHER_TARGET:
            return
        try:
            sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_"))
            if sweeper == search.SWEEPER_TARGET:
                check_study(config)
            elif sweeper != SWEEPER_TARGET:
                raise ConfigError(
                    f"hydra/launcher=fused trains a grid's points or an Optuna study's trials together; it does not "
                    f"run under the sweeper {sweeper}.\n"
                    "Fix: drop hydra/launcher=fused to run the jobs one by one, or sweep a grid (leave hydra/sweeper "
                    "at its default) or hydra/sweeper=optuna."
                )
            at_once = OmegaConf.select(config, "hydra.launcher.vmap_members")
            if at_once is not None and (isinstance(at_once, bool) or not isinstance(at_once, int) or at_once < 1):
                raise ConfigError(f"hydra.launcher.vmap_members={at_once!r} is not a number of members.\n"
                                  "Fix: a whole number >= 1, or null (all members at once on a GPU, a few on a CPU).")
            check(config)
        except ConfigError as err:
            _refuse(err)


# ---------------------------------------------------------------------------------------------------------------
# Grouping


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        found = {}
        for key, value in node.items():
            found.update(_flat(value, f"{prefix}{key}."))
        return found
    return {prefix[:-1]: node}


def _values(cfg) -> dict:
    """A composed point as flat {dotted key: value}, without Hydra's node."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    resolved.pop("hydra", None)
    return _flat(resolved)


def group_key(cfg) -> str:
    """Points with equal keys can be trained by one program."""
    values = {k: v for k, v in _values(cfg).items() if not ov.under(k, VARIES)}
    return json.dumps(values, sort_keys=True, default=str)


def plan(cfgs: list) -> tuple[list[list[int]], list[str]]:
    """The groups (indices into `cfgs`, in sweep order) and the log lines that say why."""
    keys = [group_key(c) for c in cfgs]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    found = list(groups.values())
    values = [_values(c) for c in cfgs]
    lines = [f"Fused sweep: {len(cfgs)} point(s) in {len(found)} group(s)"]
    for g, members in enumerate(found, 1):
        differ = sorted({k for i in members for k in values[i] if ov.under(k, VARIES)
                         and values[i].get(k) != values[members[0]].get(k)})
        first = values[members[0]]
        what = (f"{first['model.name']} on {first['dataset.name']}, batch {first['trainer.batch_size']}, "
                f"{first['optimizer.name']}, {first['trainer.epochs']} epochs")
        line = f"  group {g}: {len(members)} point(s) (jobs {_ranges(members)}): {what}"
        line += f"; differing in {', '.join(differ)}" if differ else ""
        others = [o for o in found if o is not members]
        if others:
            reasons = sorted({k for o in others for k in _differences(values[members[0]], values[o[0]])})
            line += f"; apart from the other group(s) by {', '.join(_why(k) for k in reasons)}"
        lines.append(line)
    return found, lines


def _differences(a: dict, b: dict) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if not ov.under(k, VARIES) and a.get(k) != b.get(k)]


def _why(key: str) -> str:
    return f"{key} ({TRACE_TIME[key]}, fixed when compiled)" if key in TRACE_TIME else key


def _ranges(indices: list[int]) -> str:
    return ", ".join(str(i) for i in indices) if len(indices) <= 8 else f"{indices[0]}..{indices[-1]}"


def capacity(budget_bytes: int, data_bytes: int, member_bytes: int) -> int:
    """How many members fit in the data budget beside the data (at least one)."""
    room = budget_bytes - data_bytes
    return max(1, int(room // max(MEMBER_COPIES * member_bytes, 1)))


def vmap_members(setting: int | None, members: int, member_bytes: int, on_cpu: bool) -> int:
    """How many members of a program are vmapped at once: `setting` (hydra.launcher.vmap_members) when given; else
    all of them on a GPU, and on a CPU as many as CPU_VMAP_BYTES holds; the chunks as even as possible."""
    if setting is None and not on_cpu:
        return members
    at_once = min(members, int(setting) if setting is not None else max(1, CPU_VMAP_BYTES // max(member_bytes, 1)))
    return math.ceil(members / math.ceil(members / at_once))


def split(members: list, cap: int) -> list[list]:
    """`members` in consecutive chunks of at most `cap`, as even as possible."""
    chunks = math.ceil(len(members) / cap)
    size, extra = divmod(len(members), chunks)  # the first `extra` chunks take one more
    bounds = [i * size + min(i, extra) for i in range(chunks + 1)]
    return [members[a:b] for a, b in zip(bounds, bounds[1:])]


# ---------------------------------------------------------------------------------------------------------------
# A member: one point's run


@dataclass
class Member:
    num: int  # the Hydra job number
    config: DictConfig  # the composed point, with its hydra node
    workdir: Path
    cfg: DictConfig = None  # without the hydra node: what train() gets
    job: object = None  # src.training.job.Job
    run_id: str | None = None
    outbox: object = None
    backup: object = None
    stopper: object = None  # Keras EarlyStopping, or None
    trial: object = None  # an Optuna sweep's trial (src/sweeps/search.py JobTrial): told each epoch, may prune
    handle: object = None  # what the stopper sees as its model
    heartbeat: object = None
    model: object = None  # its built Keras model, until its values are taken (the first member's stays: the template)
    state: tuple | None = None  # its initial (trainable, non-trainable, optimizer) values, host arrays
    initial_epoch: int = 0
    next_epoch: int = 0  # the epoch it trains next: its own count (a refilled slot's member starts at its 0)
    epochs: list = field(default_factory=list)  # every finished epoch's logs (with those before a resume)
    this_start: dict = field(default_factory=dict)  # this start's history, for the NaN check
    active: bool = True
    diverged: bool = False
    ended: bool = False
    returned: bool = False  # its JobReturn handed on (Launch._ended)
    error: BaseException | None = None

    @property
    def label(self) -> str:
        return f"#{self.num}"


def _history(m: Member) -> dict[str, list[float]]:
    """A member's History.history: every finished epoch's logs, without the epoch times."""
    return {k: [e[k] for e in m.epochs] for k in m.epochs[0] if k != names.EPOCH_TIME}


class _Handle:
    """What Keras's EarlyStopping sees as its model, for one member: asking for the weights marks the member's state
    to be copied as its best (on the device, after the epoch's callbacks); setting them marks it to be restored."""

    def __init__(self, metrics):
        self.metrics = metrics  # for EarlyStopping's direction of a monitored metric
        self.stop_training = False
        self.take = self.restore = False

    def get_weights(self):
        self.take = True
        return "the member's best state, kept on the device"

    def set_weights(self, weights) -> None:
        self.restore = True


# ---------------------------------------------------------------------------------------------------------------
# Host work per epoch, off the training loop


class HostWork:
    """Each epoch's checkpoints and MLflow metrics of a group's members, written on the runs' sender thread.

    The training loop only posts (the new stacked state, which members finished which epoch, their metrics):
    O(members) appends. The sender thread then takes the latest posted state (an older one not yet written is
    skipped: the newer checkpoint covers its epochs), commits every posted member's checkpoint, and only then
    sends the members' metrics, one request per member with all its epochs since the last send. So a checkpoint
    always has every epoch MLflow has (the rule of src/training/resume.py), and a slow store gets fewer, larger requests
    instead of falling behind."""

    def __init__(self, program):
        self.program = program
        self._lock = threading.Lock()
        self._state = None  # (stacked device state, [(member index, member, epochs so far)])
        self._metrics: dict[int, tuple] = {}  # id(member) -> (member, [Metric])
        self._futures = []
        self.flushes: list[tuple[int, float]] = []  # (member checkpoints written, seconds) per write

    def post(self, state, finished: list, metrics: list) -> None:
        """`finished`: [(index in the stacked state, member, number of its finished epochs)] to checkpoint;
        `metrics`: [(member, [Metric])] to send after."""
        from ..tracking import runs

        with self._lock:
            if finished:  # the newest state; a member finished earlier and not yet written is frozen in it
                waiting = {i: (i, member, done) for i, member, done in (self._state[1] if self._state else [])}
                waiting.update({i: (i, member, done) for i, member, done in finished})
                self._state = (state, list(waiting.values()))
            for member, values in metrics:
                self._metrics.setdefault(id(member), (member, []))[1].extend(values)
        self._futures.append(runs.send_later(self._flush))

    def _flush(self) -> None:
        import jax

        started = time.perf_counter()
        with self._lock:
            posted, self._state = self._state, None
            metrics, self._metrics = self._metrics, {}
        if posted is None and not metrics:
            return  # an earlier call wrote them
        if posted is not None:
            state, finished = posted
            host = jax.device_get(state)  # one transfer for the whole group
            for i, member, done in finished:
                member.backup.commit_arrays(member.epochs[:done], self.program.member(host, i))
        for member, values in metrics.values():
            for start in range(0, len(values), 1000):  # log_batch takes at most 1000 metrics
                member.outbox.log_metrics(member.run_id, values[start : start + 1000])
        self.flushes.append((len(posted[1]) if posted else 0, time.perf_counter() - started))

    def drain(self) -> None:
        """Wait until everything posted is written; raise a writing error."""
        futures, self._futures = self._futures, []
        for future in futures:
            future.result()


# ---------------------------------------------------------------------------------------------------------------
# The launcher


class Launch:
    """One `launch` of the fused launcher: its points, grouped, trained, each ended as its own Hydra job."""

    def __init__(self, config: DictConfig, hydra_context, task_function):
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.vmap_setting = OmegaConf.select(config, "hydra.launcher.vmap_members")
        self.experiments: dict[tuple[str, str], str] = {}  # (tracking URI, experiment name) -> experiment id
        self.unfinished: dict[str, dict[str, str]] = {}  # parent run id -> its children that did not finish, by point
        self.refill = None  # an Optuna study's src.sweeps.search.Refill: new trials for freed slots
        self.held: list[Member] = []  # trials asked for a slot of another shape: trained with a group of theirs
        self.returns: dict[int, object] = {}  # job number -> JobReturn, as each member ends

    def run(self, job_overrides, nums: list[int], refill=None) -> list:
        """The JobReturns of the points, in order; `nums`: their job numbers. With `refill` (an Optuna study), every
        member that ends is handed to `refill.done` at once and its slot taken by a trial `refill.ask` gives, until
        it gives none; those trials' JobReturns go to `refill.done` only."""
        self.refill = refill
        from hydra.core.utils import configure_log, filter_overrides, setup_globals

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        members = [self._compose(list(o), num) for o, num in zip(job_overrides, nums)]
        for m in members:
            log.info("\t#%d : %s", m.num, " ".join(filter_overrides(list(m.config.hydra.overrides.task))))
        try:
            for m in members:  # every point, before any starts
                check(m.cfg)
        except ConfigError as err:
            _refuse(err)
        groups, lines = plan([m.cfg for m in members])
        log.info("\n".join(lines))
        queue, g = [[members[i] for i in indices] for indices in groups], 0
        while queue:
            group = queue.pop(0)
            key = group_key(group[0].cfg)
            group += [m for m in self.held if group_key(m.cfg) == key]  # trials asked meanwhile, of its shape
            self.held = [m for m in self.held if m not in group]
            g += 1
            self._group(group, g)
            if not queue and self.held:  # the trials of shapes no group had: groups of their own
                groups, lines = plan([m.cfg for m in self.held])
                log.info("Trials asked to refill a slot of another shape: " + "\n".join(lines))
                queue, self.held = [[self.held[i] for i in indices] for indices in groups], []
        return [self.returns[m.num] for m in members]

    def _ended(self, m: Member, ret) -> None:
        m.returned = True
        self.returns[m.num] = ret
        if self.refill is not None:
            self.refill.done(m.num, ret)

    def _next_member(self, key: str) -> Member | None:
        """A new member for a freed slot of the group `key`: a held trial of its shape, else a newly asked trial
        (held for a later group when its shape differs); None when there is none now."""
        for m in self.held:
            if group_key(m.cfg) == key:
                self.held.remove(m)
                return m
        asked = self.refill.ask() if self.refill is not None else None
        if asked is None:
            return None
        m = self._compose(*asked)
        try:
            check(m.cfg)
        except ConfigError as err:
            self._ended(m, self._failed_return(m, err))
            return None
        if group_key(m.cfg) == key:
            return m
        self.held.append(m)
        log.info("Job #%d: of another shape than this group's; trained with a group of its own", m.num)
        return None

    def resume_command(self) -> str:
        """The sweep's command again (hydra/launcher=fused included), in its folder."""
        from ..sweeps import sweep
        from ..sweeps.manifest import resume_command

        return resume_command(sweep.command(self.config), Path(str(self.config.hydra.sweep.dir)).resolve())

    def _compose(self, overrides: list[str], num: int) -> Member:
        from hydra.core.hydra_config import HydraConfig

        from ..training.job import Job

        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = num
            config.hydra.job.num = num
        HydraConfig.instance().set_config(config)
        workdir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))) / str(OmegaConf.select(config, "hydra.sweep.subdir"))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = str(workdir.resolve())
        cfg = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
        with open_dict(cfg):
            del cfg["hydra"]
        job = Job.of(config.hydra)
        return Member(num=num, config=config, workdir=workdir.resolve(), cfg=cfg, job=job)

    # -- one group ------------------------------------------------------------------------------------------

    def _group(self, members: list[Member], g: int):
        """Set up, train and end the members of group `g`, each handed to _ended as it ends."""
        from ..training import backend

        first = members[0].cfg
        chosen = Backend.jax
        backend.activate(chosen, first.hardware)  # before anything imports Keras
        backend.import_keras(chosen)
        import jax

        from ..training import compiled, hardware, models
        from ..data import datasets

        models.check(first.model, first.optimizer)
        scope, device_text = hardware.setup(first.hardware, chosen)
        ds = datasets.load(first.dataset, datasets.data_dir(first.data_dir))
        log.info("Data: %s (%s, sha256 %s)", ", ".join(f"{k} {n}" for k, n in ds.sizes.items()), ds.path, ds.sha256[:12])
        from ..config import Accelerator

        device = jax.devices("cpu")[0] if Accelerator(first.hardware.accelerator) == Accelerator.cpu else jax.devices()[0]
        free = compiled.free_device_bytes(device)
        budget = int(first.hardware.device_data_budget * free)
        data_bytes = compiled.device_bytes(ds.train) + compiled.device_bytes(ds.val)
        if data_bytes > budget:
            log.warning("Group %d: training + validation data %.1f MB over the budget %.1f MB (hardware."
                        "device_data_budget %s x %.0f MB free): its %d point(s) run one by one, trainer.loop=compiled "
                        "streaming the data", g, data_bytes / 1e6, budget / 1e6, first.hardware.device_data_budget,
                        free / 1e6, len(members))
            for m in members:
                self._ended(m, self._alone(m))
            return

        from ..report import plots
        from ..training.record import plot_title
        from . import vmapped

        sample = compiled.rows(ds.val)  # a batch of the dataset's device form, to build each member's variables
        ready, program = [], None

        def set_up(m: Member, size: int) -> bool:
            try:
                self._setup(m, ds, chosen, device_text, scope, size, g)
                vmapped.Program.build(m.model, sample)
                m.state = vmapped.Program.state_of(m.model)
                return True
            except Exception as err:  # this point's run fails; the others go on
                m.error = err
                self._end(m, err)
                self._ended(m, self._failed_return(m, err))
                return False

        for n, m in enumerate(members):
            if not set_up(m, len(members)):
                continue
            if program is None:  # the first member's model serves the group as template
                program = vmapped.Program(m.model, ds, first.trainer.batch_size, device)
                self._compile_ahead(program, m.state, len(members) - n, budget, data_bytes, device.platform == "cpu")
            else:
                m.model = None  # its values are in m.state
            ready.append(m)
        if not ready:
            return
        member_bytes = sum(v.nbytes for values in ready[0].state for v in values)
        chunks = split(ready, capacity(budget, data_bytes, member_bytes))
        if len(chunks) > 1:
            log.info("Group %d split into %d programs of %s members: %d x %.2f MB of parameters and optimizer state "
                     "(x%d copies) do not fit beside the data (%.1f MB) in the budget %.1f MB", g, len(chunks),
                     "/".join(str(len(c)) for c in chunks), len(ready), member_bytes / 1e6, MEMBER_COPIES,
                     data_bytes / 1e6, budget / 1e6)
        drawn = None
        key = group_key(first)

        def refill(size: int) -> Member | None:  # a new member's run and state for a freed slot, or None
            while (m := self._next_member(key)) is not None:
                if set_up(m, size):
                    m.model = None  # its values are in m.state
                    ready.append(m)  # ended with the others on Ctrl-C
                    return m
            return None

        def draw(m: Member) -> None:  # its history plot on its way to a worker (taken when its run ends)
            if m.epochs and not m.diverged:
                drawn.submit(m.num, _history(m), plot_title(m.cfg))

        def end(m: Member, state, test: dict) -> None:  # a member trained: its run's end, as Hydra's job
            draw(m)
            self._ended(m, self._finish(m, program, state, test, ds, drawn))

        try:
            drawn = plots.Workers(plots.Workers.count(len(ready)))  # started now: ready when the first chunk ends
            for chunk in chunks:
                at_once = vmap_members(self.vmap_setting, len(chunk), member_bytes, device.platform == "cpu")
                state, test = self._train(chunk, program, device, g, at_once,
                                          (refill, end) if self.refill is not None else None)
                left = [(i, m) for i, m in enumerate(chunk) if not m.returned]
                for _, m in left:  # every plot on its way before the first run ends
                    draw(m)
                for i, m in left:
                    self._ended(m, self._finish(m, program, program.member(state, i),
                                                {k: float(v[i]) for k, v in test.items()}, ds, drawn))
        except BaseException as err:  # Ctrl-C, SIGTERM, a bug: every run of the group still open ends, with why
            for m in ready:
                self._end(m, err)
            if status.interrupted(err):
                print("Interrupted: the sweep's open MLflow runs were ended KILLED after their last finished epoch "
                      "(checkpointed).\nResume the sweep (FINISHED points are skipped, the others continue their "
                      f"runs) with:\n  {self.resume_command()}", file=sys.stderr)
            raise
        finally:
            if drawn is not None:
                drawn.close()

    def _compile_ahead(self, program, state: tuple, members: int, budget: int, data_bytes: int, on_cpu: bool) -> None:
        """Start compiling the group's (first) program while the other members' runs are set up: ~3 s of XLA for
        16 mnist_dense members here, off the critical path. Best effort: what fails here fails again, reported, when
        the program runs."""
        member_bytes = sum(v.nbytes for values in state for v in values)
        size = len(split(list(range(members)), capacity(budget, data_bytes, member_bytes))[0])
        try:
            program.compile_ahead(size, vmap_members(self.vmap_setting, size, member_bytes, on_cpu))
        except Exception as err:  # noqa: BLE001
            log.debug("Not compiling ahead: %s: %s", type(err).__name__, err)

    def _unfinished(self, parent_run_id: str) -> dict[str, str]:
        """The sweep's earlier children that did not finish, searched once for all members (~35 ms a search): asked
        before this launch opened any run, so a member never counts another's new run."""
        from ..sweeps import sweep

        if parent_run_id not in self.unfinished:
            self.unfinished[parent_run_id] = sweep.unfinished(parent_run_id)
        return self.unfinished[parent_run_id]

    def _alone(self, m: Member):
        """A point trained by itself (trainer.loop=compiled: data over the budget are streamed) as Hydra's job."""
        from hydra.core.utils import run_job

        with open_dict(m.config):
            m.config.trainer.loop = Loop.compiled.value
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=m.config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def _setup(self, m: Member, ds, chosen, device_text: str, scope, size: int, g: int) -> None:
        """What train() does before training, for one member: its run, tags, params, inputs, checkpoint, model."""
        import mlflow
        from hydra.core.utils import _save_config
        from mlflow.tracking import MlflowClient

        from .. import config, preflight
        from ..tracking import liveness, outbox, runs, store
        from ..training import backend, record

        cfg, job = m.cfg, m.job
        config.validate(cfg, job.choices)
        config.check_fits(cfg, ds.sizes["train"])
        m.workdir.mkdir(parents=True, exist_ok=True)
        preflight.check_folder(m.workdir, "output folder", preflight.OUTPUT_FIX)
        if m.config.hydra.output_subdir is not None:  # as Hydra's run_job writes them (again when the job ends)
            hydra_files = m.workdir / str(m.config.hydra.output_subdir)
            _save_config(cfg, "config.yaml", hydra_files)
            _save_config(m.config.hydra, "hydra.yaml", hydra_files)
            _save_config(m.config.hydra.overrides.task, "overrides.yaml", hydra_files)
        where = (store.tracking_uri(cfg.tracking.tracking_uri), config.experiment_name(cfg))
        if where not in self.experiments:  # once per store and experiment, not per member (~50 ms each)
            self.experiments[where] = store.connect(*where)
            liveness.reconcile(MlflowClient(), [self.experiments[where]])
        mlflow.set_tracking_uri(where[0])  # what connect set; another group of the sweep may use another store
        experiment_id, client = self.experiments[where], MlflowClient()
        parent_run_id, tags, m.backup = record.identify(cfg, job, chosen.value, ds.sha256, m.workdir, device_text,
                                                       Loop.compiled.value, unfinished=self._unfinished)
        tags.update({names.FUSED_GROUP: f"{job.sweep_dir.name}/{g}", names.FUSED_MEMBERS: str(size)})
        m.trial = search.JobTrial.of_job(job.sweep_dir, job.num)  # as a lone trial's job: reports each epoch
        if m.trial is not None:
            m.trial.starts(m.backup.folder, m.backup.epochs)
            tags.update(m.trial.tags())
        m.outbox = outbox.Outbox(m.workdir / outbox.FILENAME, client)
        run = runs.open_member(client, experiment_id, job.name or cfg.model.name, tags, parent_run_id,
                               resume_run_id=m.backup.run_id)
        m.run_id = run.info.run_id
        m.heartbeat = liveness.Heartbeat(client, m.run_id).start()
        m.backup.record_run(m.run_id)
        record.log_start(run, cfg, ds, chosen.value, m.outbox)
        log.info("Job #%d: MLflow run %s%s, output %s, checkpoint %s", job.num, m.run_id,
                 " (resumed)" if m.backup.run_id and m.backup.epochs else "", m.workdir, m.backup.folder)

        with scope:  # its model as a lone run builds it: under its own seed
            backend.set_random_seed(chosen, cfg.seed)
            model = record.build(cfg, ds)
            m.initial_epoch = m.backup.restore(model)
        m.epochs = list(m.backup.epochs)
        m.model = model
        m.stopper = record.early_stopping(cfg)
        if m.stopper is not None:  # its stop is logged naming the job (_epoch_end); Keras's lines would not say which
            m.stopper.verbose = 0
        if m.epochs:  # epochs the backup has and MLflow lacks (killed between the two): sent now
            from ..training.callbacks import MLflowMetrics

            MLflowMetrics(m.run_id, client, finished_epochs=m.epochs, outbox=m.outbox).on_train_begin()

    # -- training -------------------------------------------------------------------------------------------

    def _train(self, chunk: list[Member], program, device, g: int, at_once: int, refilling=None):
        """Train the chunk's members together with `program` (`at_once` of them vmapped at a time); returns (final
        stacked state, test logs per member). `refilling`: (refill(size), end(member, state, test)): at each epoch's
        end a member that stopped is ended at once and a new one (refill) takes its slot; `chunk` then lists each
        slot's last member, and the returned logs are theirs."""
        import numpy as np
        from mlflow.entities import Metric

        from ..tracking import runs
        from ..training.callbacks import numeric_logs

        total = int(chunk[0].cfg.trainer.epochs)
        for m in chunk:
            self._arm(m, program, total)
        state = program.stack([m.state for m in chunk])
        keys = program.keys([int(m.cfg.seed) for m in chunk])
        best = None
        host = HostWork(program)
        tracking = chunk[0].cfg.tracking  # the members' system metrics, as a lone run's (one monitor for all)
        monitor = (runs.GroupSystemMetrics([m.run_id for m in chunk], tracking.system_metrics_interval).start()
                   if tracking.system_metrics else None)
        restore = runs.signals_raise()
        log.info("Group %d: training %d member(s) together on %s, %d epoch(s)%s", g, len(chunk), device, total,
                 "" if at_once == len(chunk) else f", vmapped {at_once} at a time (hydra.launcher.vmap_members)")
        host_ms = []  # per epoch, the training thread's time outside the compiled epoch and its transfer
        try:
            while any(m.active for m in chunk):
                runs.raise_if_interrupted()
                epochs = [m.next_epoch for m in chunk]
                active = [m.active for m in chunk]
                started = time.perf_counter()
                # the one transfer of the epoch: the logs
                state, train_logs, val_logs = program.live_epoch(state, keys, epochs, active, at_once)
                seconds = time.perf_counter() - started
                finished, metrics = self._epoch_end(chunk, epochs, active, train_logs, val_logs, seconds, total,
                                                    numeric_logs, Metric)
                takes = [m.handle.take for m in chunk]
                if any(takes):
                    best = program.select(np.asarray(takes), state, state if best is None else best)
                restores = [m.handle.restore for m in chunk]
                if any(restores):
                    state = program.select(np.asarray(restores), best, state)
                for m in chunk:
                    m.handle.take = m.handle.restore = False
                host.post(state, finished, metrics)
                self._log_epoch(g, chunk, epochs, active, val_logs, seconds, total)
                host_ms.append((time.perf_counter() - started - seconds) * 1000)
                if refilling is not None and (freed := [i for i, m in enumerate(chunk) if not m.active
                                                        and not m.returned]):
                    host.drain()  # their last checkpoints written before their runs end and their slots change
                    state, keys = self._refill(chunk, freed, state, program, total, monitor, *refilling)
            host.drain()
            if host_ms:  # benchmarks/bench_fused_host.py reads it
                writes = sorted(seconds for _, seconds in host.flushes) or [0.0]
                log.info("Group %d: host work per epoch (metrics, early stopping, hand-over to the writer thread) "
                         "median %.1f ms for %d member(s); the writer thread wrote %d time(s) in %d epoch(s) (each "
                         "time every member's latest checkpoint and unsent metrics), median %.0f ms", g,
                         sorted(host_ms)[len(host_ms) // 2], len(chunk), len(host.flushes), len(host_ms),
                         writes[len(writes) // 2] * 1000)
            runs.raise_if_interrupted()
        except BaseException:
            try:
                host.drain()  # every finished epoch checkpointed and logged before the runs end (in _group)
            except Exception as write_error:  # noqa: BLE001 - the first error is the one raised
                log.error("Writing the last checkpoints failed: %s", write_error)
            raise
        finally:
            restore()
            if monitor is not None:
                monitor.finish()
        test = program.evaluate(state, "test")
        return state, test

    def _arm(self, m: Member, program, total: int) -> None:
        """A member about to train: its early stopping watching it, its epochs counted from where it starts."""
        m.handle = _Handle(program.model.metrics)
        if m.stopper is not None:
            m.stopper.set_model(m.handle)
            m.stopper.on_train_begin()
        m.next_epoch = m.initial_epoch
        m.active = m.initial_epoch < total

    def _refill(self, chunk, freed, state, program, total, monitor, refill, end):
        """End the `freed` slots' members (test metrics, artifacts, run end) and put new members in their slots
        while `refill` gives them: the program stays full. Returns the new (stacked state, keys)."""
        test = program.evaluate(state, "test", members=freed, keep=True)
        for j, i in enumerate(freed):
            end(chunk[i], program.member(state, i), {k: float(v[j]) for k, v in test.items()})
        for i in freed:
            if (m := refill(len(chunk))) is None:
                break  # the study asked all its trials (or the rest are of other shapes)
            self._arm(m, program, total)
            log.info("Job #%d takes job #%d's slot (from epoch %d)", m.num, chunk[i].num, m.initial_epoch + 1)
            chunk[i] = m
            state = program.put(state, i, m.state)
            if monitor is not None:
                monitor.add(m.run_id)
        return state, program.keys([int(m.cfg.seed) for m in chunk])

    def _epoch_end(self, chunk, epochs, active, train_logs, val_logs, seconds, total, numeric_logs, Metric):
        """Per member: its epoch's logs, NaN, early stopping; what to checkpoint and send."""
        now = int(time.time() * 1000)
        finished, metrics = [], []
        for i, m in enumerate(chunk):
            if not active[i]:
                continue
            epoch = epochs[i]
            logs = {k: float(v[i]) for k, v in train_logs.items()}
            logs.update({f"val_{k}": float(v[i]) for k, v in val_logs.items()})
            values = {**numeric_logs(logs), names.EPOCH_TIME: seconds}  # the group's epoch: every member's time
            for key, value in logs.items():
                m.this_start.setdefault(key, []).append(value)
            metrics.append((m, [Metric(k, v, now, epoch + 1) for k, v in values.items()]))
            m.next_epoch = epoch + 1
            if not math.isfinite(logs.get("loss", 0.0)):  # TerminateOnNaN: stop after this epoch; the run fails
                m.diverged, m.active = True, False
                continue
            m.epochs.append(values)
            finished.append((i, m, len(m.epochs)))
            if m.stopper is not None:
                m.stopper.on_epoch_end(epoch, logs)
            # after early stopping, as a lone trial's ReportToTrial is its last callback: the pruner freezes it
            monitored = values.get(str(m.cfg.trainer.monitor))
            pruned = (m.trial is not None and monitored is not None
                      and m.trial.report(epoch + 1, monitored, may_prune=epoch + 1 < total))
            if m.handle.stop_training or pruned or epoch + 1 >= total:
                m.active = False
                if m.stopper is not None:
                    m.stopper.on_train_end()  # restores the best epoch's weights, as in a lone run
                    if m.stopper.stopped_epoch:
                        log.info("Job #%d: early stopping after epoch %d (best epoch %d)", m.num, epoch + 1,
                                 m.stopper.best_epoch + 1)
        return finished, metrics

    def _log_epoch(self, g, chunk, epochs, active, val_logs, seconds, total) -> None:
        trained = [i for i, a in enumerate(active) if a]
        if not trained:
            return
        losses = [(float(val_logs["loss"][i]), chunk[i].num) for i in trained]
        finite = [x for x in losses if math.isfinite(x[0])]
        low = min(finite) if finite else (float("nan"), "-")
        log.info("Group %d epoch %d/%d: %d member(s) trained in %.2f s; val_loss %s, lowest job #%s",
                 g, max(epochs[i] for i in trained) + 1, total, len(trained), seconds,
                 " ".join(f"{x[0]:.4f}" for x in losses[:8]) + (" ..." if len(losses) > 8 else ""), low[1])

    # -- ending each member as Hydra's job --------------------------------------------------------------------

    def _finish(self, m: Member, program, state, test: dict, ds, drawn):
        from hydra.core.utils import run_job

        def task(_cfg):
            return self._finish_run(m, program, state, test, ds, drawn)

        return run_job(hydra_context=self.hydra_context, task_function=task, config=m.config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def _finish_run(self, m: Member, program, state, test: dict, ds, drawn) -> float:
        """What train() does after training, for one member: its result, artifacts, model, and its run's end."""
        from ..tracking import runs
        from ..training import record

        cfg = m.cfg
        m.heartbeat.stop()
        try:
            with runs.finishing(m.run_id, m.outbox):
                m.ended = True
                if m.diverged:
                    record.raise_on_nan(m.this_start, cfg)
                if m.trial is not None and m.trial.pruned_at is not None:  # stopped, not failed: FINISHED, as alone
                    m.outbox.set_tag(m.run_id, names.PRUNED, "true")
                    m.outbox.set_tag(m.run_id, names.PRUNED_AT_EPOCH, str(m.trial.pruned_at))
                program.assign(state)
                objective = record.finish(cfg, m.run_id, m.outbox, _history(m), test, program.model, ds, m.workdir,
                                          plot=lambda path: drawn.take(m.num, path))
        except Exception:
            log.exception("Job #%d (run %s) failed", m.num, m.run_id)
            raise
        m.backup.discard()  # FINISHED: nothing left to resume
        log.info("Job #%d: run %s FINISHED", m.num, m.run_id)
        return objective

    def _end(self, m: Member, err: BaseException) -> None:
        """End a member's run that is still open (not yet being finished), as `err` ends a run (KILLED or FAILED)."""
        from ..tracking import runs

        if m.heartbeat is not None:
            m.heartbeat.stop()
        if m.run_id is None or m.ended:
            return
        m.ended = True
        runs.end_member(m.run_id, err, m.outbox)

    def _failed_return(self, m: Member, err: BaseException):
        from hydra.core.utils import JobReturn, JobStatus

        ret = JobReturn()
        ret.cfg, ret.hydra_cfg, ret.overrides = m.cfg, OmegaConf.create({"hydra": m.config.hydra}), list(
            m.config.hydra.overrides.task)
        ret.working_dir, ret.task_name = os.getcwd(), str(m.config.hydra.job.name)
        ret.return_value, ret.status = err, JobStatus.FAILED
        return ret
