"""One MLflow parent run per multirun, every job a child run, and a summary when the sweep ends.

A Hydra callback (conf/config.yaml, hydra.callbacks.mlflow_sweep) runs in the sweep's driver:
- on_multirun_start creates the parent run, before any job starts, and records its id in
  `<sweep dir>/mlflow_parent.json`; each job (local, or a SLURM array task on another node of the
  shared filesystem) reads it there and starts its run as a child (`parent_run`);
- on_multirun_end puts a summary on the parent: a Markdown table of the children (the overrides
  that vary, final validation and test metrics), the best run named in tags, and prints it to the
  driver's log. If the sweep stops early (a job failed or crashed, the driver was killed), the same
  summary is written at exit and the parent ends FAILED; children whose process died without
  ending their run are marked FAILED then, so nothing stays RUNNING.

Works the same with the basic launcher and with hydra/launcher=slurm (hydra-submitit-launcher).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from hydra.experimental.callback import Callback
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from .. import overrides as ov
from ..config import best as best_of
from ..config import experiment_name, lower_is_better
from ..report.tables import markdown_table
from ..tracking import liveness, names, runs, status, store
from . import manifest

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"
SUMMARY_FILE = "sweep_summary.md"
METRICS = ("val_loss", "val_accuracy", "test_loss", "test_accuracy")


def parent(sweep_dir: Path | None, overrides: list[str], job_num: int | None) -> tuple[str | None, dict[str, str]]:
    """In a multirun job (`sweep_dir` set): the parent run's id and the tags a child carries; else (None, {})."""
    if sweep_dir is None:
        return None, {}
    path = Path(sweep_dir) / PARENT_FILE
    if not path.exists():  # the callback was switched off: jobs are plain runs
        return None, {}
    record = json.loads(path.read_text())
    # Exact override strings (values may hold spaces, commas, '='), for the summary's table.
    return record["run_id"], {names.SWEEP_OVERRIDES: json.dumps(list(overrides)), names.SWEEP_JOB_NUM: str(job_num)}


def unfinished(parent_run_id: str, point: str | None = None) -> dict[str, str]:
    """{point hash: the latest earlier child of that point that did not finish} over the parent's children (only
    `point`'s when given): the runs that a rerun of those points retries."""
    where = f"tags.`{names.SWEEP_POINT}` = '{point}'" if point is not None else ""
    earlier = store.children(MlflowClient(), parent_run_id, where=where)  # oldest first: the latest wins
    return {r.data.tags[names.SWEEP_POINT]: r.info.run_id for r in earlier
            if not status.finished(r) and names.SWEEP_POINT in r.data.tags}


# Hydra's own overrides that say where this start writes, not how the sweep runs: the resume command names the
# folder itself, and Hydra adds the mode for -m.
NOT_IN_COMMAND = ("hydra.sweep.dir", "hydra.run.dir", "hydra.mode")


def command(config) -> list[str]:
    """The sweep's command as overrides: Hydra's own that choose how it runs (hydra/launcher=fused,
    hydra.launcher.partition=gpu), then the task's; what the resume command repeats."""
    chosen = ov.without(list(config.hydra.overrides.hydra), NOT_IN_COMMAND)
    return [*chosen, *config.hydra.overrides.task]


# What a sweep may change and stay the same sweep: a study's budget (the same study runs on to the new total).
GROWS = ("hydra.sweeper.n_trials",)


def same_sweep(before: list[str], now: list[str], grid: bool) -> bool:
    """Whether command `now` continues the sweep that command `before` started: equal less what may grow (a study's
    n_trials) or, for a grid, each swept key's values a superset of the earlier ones (only the new points run). An
    Optuna study's search space is its own: any change starts another study."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    before, now = ov.without(before, GROWS), ov.without(now, GROWS)
    if before == now or not grid:
        return before == now
    parser = OverridesParser.create()

    def split(overrides):
        parsed = parser.parse_overrides(overrides)
        fixed = [text for o, text in zip(parsed, overrides) if not o.is_sweep_override()]
        return fixed, {o.get_key_element(): set(o.sweep_string_iterator()) for o in parsed if o.is_sweep_override()}

    (fixed_before, swept_before), (fixed_now, swept_now) = split(before), split(now)
    return fixed_before == fixed_now and swept_before.keys() == swept_now.keys() and all(
        swept_before[k] <= swept_now[k] for k in swept_before)


def difference(before: list[str], now: list[str]) -> str:
    """The overrides only one of two commands has, as a refusal shows them."""
    gone, new = [o for o in before if o not in now], [o for o in now if o not in before]
    return "; ".join(part for part in (f"only in that sweep: {' '.join(gone)}" if gone else "",
                                       f"only in this command: {' '.join(new)}" if new else "") if part)


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a sweep varies (`optimizer.learning_rate=1e-2,1e-3`, `seed=range(3)`): what tells its jobs apart."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [o.get_key_element() for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]


def varied(sweep_dir: Path | None, overrides: list[str]) -> list[str] | None:
    """A job's overrides of the keys its sweep varies, or None when the sweep did not record them."""
    path = Path(sweep_dir) / PARENT_FILE if sweep_dir else None
    if path is None or not path.is_file():
        return None
    keys = json.loads(path.read_text()).get("swept")
    if keys is None:
        return None
    return [o for o in overrides if ov.key(o) in keys]


class MLflowSweep(Callback):
    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.sweep_dir: Path | None = None
        self.monitor = "val_loss"
        self._ended = False
        self._heartbeat = None  # the parent run's, while the sweep runs (src/tracking/liveness.py)
        self._interrupt: BaseException | None = None  # the SIGTERM that stopped the driver

    def __getstate__(self) -> dict:
        # hydra-submitit-launcher pickles Hydra's callbacks with each job; the heartbeat thread (locks) is the
        # driver's own and stays behind
        return {**self.__dict__, "_heartbeat": None}

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            self._start(config)
        except store.TrackingError as err:
            # Hydra would only warn about a callback's exception and run the jobs anyway.
            log.error("%s", err)
            sys.exit(2)

    def _start(self, config: DictConfig) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self.monitor = config.trainer.monitor
        uri = store.tracking_uri(config.tracking.tracking_uri)
        experiment_id = store.connect(uri, experiment_name(config))
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self._uri = uri
        self._command = command(config)
        self._task_overrides = list(config.hydra.overrides.task)
        self._grid = "optuna" not in str(config.hydra.sweeper.get("_target_", ""))
        record = self.sweep_dir / PARENT_FILE
        try:
            # "x": exclusive creation, so two sweeps can never share a folder (nor a parent run)
            handle = open(record, "x")
        except FileExistsError:
            self._reopen(record, uri)  # the same command again in its folder: the same sweep, resumed
            handle = None
        tags = {
            names.SWEEP_DIR: str(self.sweep_dir),
            names.SWEEP_OVERRIDES: json.dumps(list(config.hydra.overrides.task)),
            "host": socket.gethostname(),
            # The driver owns the parent: if it dies hard, a later train/compare ends the parent FAILED.
            # With slurm.job_id when the driver itself is a job (slurm/sweep.sbatch).
            **liveness.owner_tags(),
        }
        if handle is None:
            # this driver owns it now (a concurrent reconcile sees a live owner), then it is RUNNING again
            MlflowClient(uri).log_batch(self.parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()
                                                                   if k != names.SWEEP_OVERRIDES])
            MlflowClient(uri).update_run(self.parent_run_id, status=status.RUNNING)
            self._heartbeat = liveness.Heartbeat(MlflowClient(uri), self.parent_run_id).start()
        else:
            with handle:
                try:
                    run = MlflowClient(uri).create_run(experiment_id, tags=tags,
                                                       run_name=f"sweep {self.sweep_dir.name}")
                except Exception:
                    record.unlink()  # no half-made record for the jobs to trip over
                    raise
                self.parent_run_id = run.info.run_id
                self._heartbeat = liveness.Heartbeat(MlflowClient(uri), self.parent_run_id).start()
                json.dump({"run_id": self.parent_run_id, "experiment_id": experiment_id, "tracking_uri": uri,
                           "swept": swept_keys(list(config.hydra.overrides.task)), "command": self._command}, handle)
            log.info("MLflow parent run %s for the sweep in %s", self.parent_run_id, self.sweep_dir)
        atexit.register(self._end_unfinished)
        if threading.current_thread() is threading.main_thread():
            # scancel of the driver: exit through atexit, so the parent gets its summary and ends (KILLED)
            signal.signal(signal.SIGTERM, self._terminated)

    def _terminated(self, signum, frame) -> None:
        self._interrupt = status.Terminated(f"{signal.Signals(signum).name} (signal {signum})")
        sys.exit(128 + signum)

    def _reopen(self, record: Path, uri: str) -> None:
        """The sweep folder's own parent run, RUNNING again, when this is the same command; else refuse."""
        parent = json.loads(record.read_text())
        client = MlflowClient(uri)
        try:
            run = client.get_run(parent["run_id"])
        except Exception:
            run = None
        before = parent.get("command")  # a record written before it held the command: the task's overrides
        if before is None and run is not None:
            before = json.loads(run.data.tags.get(names.SWEEP_OVERRIDES, "null"))
        same = before is not None and same_sweep(before, self._command, self._grid)
        if run is None or parent.get("tracking_uri") != uri or not same:
            started = (f"its command: {manifest.resume_command(before, self.sweep_dir)}\n  "
                       f"Changed: {difference(ov.without(before, GROWS), ov.without(self._command, GROWS))}"
                       if before is not None else f"its MLflow parent run {parent.get('run_id')} is not in {uri}")
            raise store.TrackingError(
                f"the sweep folder {self.sweep_dir} belongs to another sweep ({record}): {started}.\n"
                "Fix: run that command to continue that sweep, or give this sweep a new folder "
                "(leave hydra.sweep.dir at its default)."
            )
        self.parent_run_id = run.info.run_id
        if before != self._command:  # grown (more trials, more grid values): the record holds the latest command
            record.write_text(json.dumps({**parent, "command": self._command,
                                          "swept": swept_keys(self._task_overrides)}))
            log.info("The sweep in %s grows: %s", self.sweep_dir, difference(before, self._command))
        with contextlib.suppress(Exception):
            client.delete_tag(self.parent_run_id, names.FAILURE_REASON)
        log.info("Resuming the sweep in %s: its MLflow parent run %s is RUNNING again", self.sweep_dir,
                 self.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.parent_run_id:
            try:
                self._finish(status.FINISHED)
            except Exception:
                log.exception("Could not write the sweep summary")
                self._ended = False  # try again at exit, ending the parent FAILED

    def _end_unfinished(self) -> None:
        if self.parent_run_id and not self._ended:
            log.error("The sweep did not complete: summarising what ran")
            # Ctrl-C or SIGTERM of the driver (or of the job it ran in-process) ends the parent KILLED, as its runs
            interrupt = self._interrupt or runs.interruption()
            if interrupt is not None:
                self._finish(*status.ending(interrupt))
            else:
                self._finish(status.FAILED, reason="the sweep did not complete: a job failed or the driver was stopped")
            log.error("Continue it (points already FINISHED are skipped, failed ones rerun) with:\n  %s",
                      manifest.resume_command(self._command or [], self.sweep_dir))

    def _finish(self, end: str, reason: str | None = None) -> None:
        self._ended = True
        if self._heartbeat is not None:
            self._heartbeat.stop()
        client = MlflowClient(self._uri)
        children = _children(client, self.parent_run_id)
        if end != status.FINISHED:
            _end_dead(client, children)
            children = _children(client, self.parent_run_id)
        points = manifest.Manifest(self.sweep_dir)
        progress = points.progress(children) if points.points else None
        if end == status.FINISHED and progress is not None and progress.finished < progress.total:
            end, reason = status.FAILED, f"the sweep did not complete: {progress.line()}"
        text, best = summary(children, self.monitor)
        if progress is not None:
            text += f"\nPoints: {progress.line()}.\n"
        client.log_text(self.parent_run_id, text, SUMMARY_FILE)
        (self.sweep_dir / SUMMARY_FILE).write_text(text)
        tags = {names.SWEEP_CHILDREN: str(len(children))}
        if best is not None:
            tags.update(
                {
                    names.BEST_RUN_ID: best.info.run_id,
                    names.BEST_RUN_NAME: best.info.run_name,
                    names.objective(self.monitor): str(best.data.metrics.get(names.objective(self.monitor))),
                }
            )
        if reason:
            tags[names.FAILURE_REASON] = reason
        for key, value in tags.items():
            client.set_tag(self.parent_run_id, key, value)
        client.set_terminated(self.parent_run_id, end)
        log.info("Sweep summary (MLflow parent run %s, %s):\n%s", self.parent_run_id, end, text)


def _children(client, parent_run_id: str) -> list:
    runs = store.children(client, parent_run_id)
    return sorted(runs, key=lambda run: int(run.data.tags.get(names.SWEEP_JOB_NUM, 0)))  # in the sweep's order


def summary(children: list, monitor: str = "val_loss") -> tuple[str, object | None]:
    """A Markdown table of the children (overrides that vary, final metrics) and the best finished child."""
    overrides = [_overrides(run) for run in children]
    keys = sorted({k for o in overrides for k in o})
    varying = [k for k in keys if len({o.get(k) for o in overrides}) > 1] or keys
    columns = ["run", "status", *varying, *METRICS, "slurm job"]
    rows = []
    for run, o in zip(children, overrides):
        m = run.data.metrics
        job = run.data.tags.get(names.SLURM_JOB, "")
        if run.data.tags.get(names.SLURM_ARRAY_TASK):
            job = f"{run.data.tags.get(names.SLURM_ARRAY_JOB)}_{run.data.tags[names.SLURM_ARRAY_TASK]}"
        rows.append(
            [run.info.run_id[:8], run.info.status, *(o.get(k, "") for k in varying),
             *(f"{m[k]:.4f}" if k in m else "" for k in METRICS), job]
        )
    # The best run is the one with the best objective (its best epoch, as src.train returns), not the best last epoch.
    objective = names.objective(monitor)
    finished = [r for r in children if status.finished(r) and objective in r.data.metrics]
    best = None
    if finished:
        best = best_of(finished, monitor, key=lambda r: r.data.metrics[objective])
    lines = [
        f"# Sweep: {len(children)} runs, {sum(status.finished(r) for r in children)} finished",
        "",
        markdown_table(columns, [[str(c) for c in row] for row in rows]),
        "",
        (
            f"Best run by its best epoch's {monitor} ({'lowest' if lower_is_better(monitor) else 'highest'}): "
            f"{best.info.run_id[:8]} ({' '.join(f'{k}={v}' for k, v in _overrides(best).items() if k in varying)}), "
            f"{objective} = {best.data.metrics[objective]:.4f}, run id {best.info.run_id}"
            if best
            else f"No finished run has {objective}."
        ),
    ]
    return "\n".join(lines) + "\n", best


def _overrides(run) -> dict[str, str]:
    raw = run.data.tags.get(names.SWEEP_OVERRIDES)
    items = json.loads(raw) if raw else []
    return dict(item.partition("=")[::2] for item in items)


def _end_dead(client, children: list) -> None:
    """Mark FAILED the children still RUNNING whose job is over (killed hard, node lost): liveness's rule, told
    that the sweep's jobs have returned."""
    for run in children:
        if not status.running(run):
            continue
        reason = liveness.why_dead(run.data.tags, run.info.start_time, job_returned=True)
        if reason is not None:
            liveness.end_failed(client, run.info.run_id, reason)
            log.error("Child run %s (%s) died without ending: marked FAILED", run.info.run_name, run.info.run_id)
