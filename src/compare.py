"""Compare runs from the MLflow store in a terminal: a table, an overlaid plot, a Markdown report.

    python -m src.compare mnist_activation          # every run of an experiment (by name)
    python -m src.compare mnist_lr --last 6         # only its 6 most recent runs
    python -m src.compare 3f2a...                   # a sweep's parent run: its child runs
    python -m src.compare 3f2a... 9c1b... 77de...   # these runs (any experiments)

Prints the config values that differ between the runs, best and final validation metrics, test
metrics, epochs and wall time; writes compare.png (validation loss and accuracy per epoch, one line
per run) and report.md into --out. When all runs share a parent run (a sweep), both files are also
logged to that parent under compare/. Needs no browser: it reads the store directly (or a server).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from . import config
from .tracking import liveness, names, store
from .report import plots
from .paths import PROJECT_ROOT
from .report.tables import markdown_table, text_table

PARENT_TAG = names.PARENT_RUN
RUN_ID = re.compile(r"[0-9a-f]{32}")
HISTORY_KEYS = names.HISTORY
# Params that always differ between runs and say nothing about the experiment.
IGNORED_PARAMS = {"tracking.tracking_uri", "data_dir"}


class CompareError(RuntimeError):
    """The runs to compare cannot be found; the message names the fix."""


@dataclass
class RunSummary:
    run_id: str
    name: str
    experiment: str
    status: str
    params: dict
    history: dict = field(default_factory=dict)  # metric -> values per epoch (epoch 1 first)
    test: dict = field(default_factory=dict)  # test_accuracy, test_loss
    wall_s: float | None = None
    parent: str | None = None
    failure: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.history.get("loss", []))


# ---------------------------------------------------------------------------------------------
# Finding the runs


def resolve(client: MlflowClient, targets: list[str], last: int | None = None) -> list:
    """Each target is a run id (a parent stands for its children) or an experiment name."""
    runs, seen = [], set()
    for target in targets:
        for run in _resolve_one(client, target, last):
            if run.info.run_id not in seen:
                seen.add(run.info.run_id)
                runs.append(run)
    if not runs:
        raise CompareError(f"no runs found for {' '.join(targets)}.")
    return runs


def _resolve_one(client: MlflowClient, target: str, last: int | None) -> list:
    if RUN_ID.fullmatch(target):
        try:
            run = client.get_run(target)
        except MlflowException:
            run = None
        if run is not None:
            children = store.children(client, target, run.info.experiment_id)
            return children[-last:] if (children and last) else (children or [run])
    experiment = client.get_experiment_by_name(target)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL))
        raise CompareError(
            f"{target!r} is neither a run id nor an experiment in this store.\n"
            f"Experiments here: {', '.join(known) or '(none)'}.\n"
            "Fix: pass an experiment name, a sweep's parent run id or run ids (see the MLflow UI or "
            "`mlflow runs list --experiment-id ID`), or --tracking-uri for another store."
        )
    runs = store.search_runs(client, [experiment.experiment_id])
    parents = {r.data.tags.get(PARENT_TAG) for r in runs}
    runs = [r for r in runs if r.info.run_id not in parents]  # a sweep's parent has no epochs of its own
    return runs[-last:] if last else runs


def summarise(client: MlflowClient, run) -> RunSummary:
    info, data = run.info, run.data
    history = {}
    for key in HISTORY_KEYS:
        if key in data.metrics:
            points = sorted(client.get_metric_history(info.run_id, key), key=lambda m: m.step)
            history[key] = [m.value for m in points]
    wall = (info.end_time - info.start_time) / 1000 if info.end_time and info.start_time else None
    return RunSummary(
        run_id=info.run_id,
        name=info.run_name or info.run_id[:8],
        experiment=info.experiment_id,
        status=info.status,
        params=dict(data.params),
        history=history,
        test={k: v for k, v in data.metrics.items() if k.startswith(names.TEST_PREFIX)},
        wall_s=wall,
        parent=data.tags.get(PARENT_TAG),
        failure=data.tags.get(names.FAILURE_REASON),
    )


# ---------------------------------------------------------------------------------------------
# The table


def differing_params(summaries: list[RunSummary]) -> list[str]:
    keys = sorted({k for s in summaries for k in s.params} - IGNORED_PARAMS)
    return [k for k in keys if len({s.params.get(k) for s in summaries}) > 1]


def labels(summaries: list[RunSummary], keys: list[str]) -> list[str]:
    """What tells the runs apart: the differing config values, else the run names."""
    if keys:
        found = [" ".join(f"{_short(k)}={s.params.get(k, '-')}" for k in keys) for s in summaries]
        if len(set(found)) == len(found):
            return found
        return [f"{label} ({s.run_id[:8]})" for label, s in zip(found, summaries)]
    return [f"{s.name} ({s.run_id[:8]})" for s in summaries]


def _short(key: str) -> str:
    """model.activation -> activation; optimizer.name -> optimizer (a group's choice)."""
    group, _, leaf = key.rpartition(".")
    return group if leaf == "name" and group else leaf


def _best(values: list[float], monitor: str) -> tuple[float, int] | None:
    """The best finite value for `monitor` and its epoch (counted from 1)."""
    finite = [(v, i + 1) for i, v in enumerate(values) if math.isfinite(v)]
    return config.best(finite, monitor, key=lambda p: p[0]) if finite else None


def _fmt(value, digits=4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def best_run(summaries: list[RunSummary]) -> tuple[RunSummary, str, float, int] | None:
    """The best finished run by the objective src.train returns to sweepers (its best epoch's trainer.monitor),
    with that monitor, value and epoch; None when no finished run has it. The runs' own trainer.monitor when they
    share one, else val_loss."""
    monitors = {s.params.get("trainer.monitor") for s in summaries}
    monitor = monitors.pop() if len(monitors) == 1 and None not in monitors else "val_loss"
    scored = [(s, _best(s.history.get(monitor, []), monitor)) for s in summaries if s.status == "FINISHED"]
    scored = [(s, found) for s, found in scored if found]
    if not scored:
        return None
    s, (value, epoch) = config.best(scored, monitor, key=lambda pair: pair[1][0])
    return s, monitor, value, epoch


def best_line(summaries: list[RunSummary], label: dict[str, str]) -> str:
    found = best_run(summaries)
    if found is None:
        return "Best run: none (no finished run has the monitored metric)."
    s, monitor, value, epoch = found
    word = "lowest" if config.lower_is_better(monitor) else "highest"
    return (f"Best run: {s.run_id[:8]} ({label[s.run_id]}), {monitor} {value:.4f} at epoch {epoch} "
            f"({word} best-epoch {monitor}, the value src.train returns to sweepers); run id {s.run_id}")


def sweep_progress(client: MlflowClient, targets: list[str]) -> list[str]:
    """For each target that is a sweep's parent with a manifest (src/manifest.py): how far its points got, and the
    command that continues it when some are not FINISHED."""
    from .sweeps.manifest import Manifest

    lines = []
    for target in targets:
        if not RUN_ID.fullmatch(target):
            continue
        try:
            parent = client.get_run(target)
        except MlflowException:
            continue
        folder = parent.data.tags.get(names.SWEEP_DIR)
        manifest = Manifest(Path(folder)) if folder else None
        if manifest is None or not manifest.points:
            continue
        children = store.children(client, target, parent.info.experiment_id)
        progress = manifest.progress(children)
        lines.append(f"Sweep {folder}: {progress.line()} ({progress.total} points).")
        if progress.finished < progress.total:
            lines.append(f"Continue it (FINISHED points are skipped):\n  {manifest.data.get('resume')}")
    return lines


def table(summaries: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    keys = differing_params(summaries)
    header = ["run", *keys, "status", "epochs", "best val_loss (ep)", "final val_loss",
              "best val_acc (ep)", "final val_acc", "test_acc", "test_loss", "wall s"]
    rows = []
    for s in summaries:
        vl, va = s.history.get("val_loss", []), s.history.get("val_accuracy", [])
        best_vl, best_va = _best(vl, "val_loss"), _best(va, "val_accuracy")
        rows.append([
            s.run_id[:8],
            *[s.params.get(k, "-") for k in keys],
            s.status,
            str(s.epochs),
            f"{best_vl[0]:.4f} ({best_vl[1]})" if best_vl else "-",
            _fmt(vl[-1] if vl else None),
            f"{best_va[0]:.4f} ({best_va[1]})" if best_va else "-",
            _fmt(va[-1] if va else None),
            _fmt(s.test.get("test_accuracy")),
            _fmt(s.test.get("test_loss")),
            _fmt(s.wall_s, 1),
        ])
    return header, rows


def report(title: str, command: str, uri: str, summaries, header, rows, plot_name: str, best: str = "") -> str:
    runs = "\n".join(
        f"- `{s.run_id}` {s.name} ({s.status}" + (f": {s.failure}" if s.failure else "") + ")" for s in summaries
    )
    return (
        f"# {title}\n\n"
        f"Made by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from `{uri}`.\n\n"
        f"{markdown_table(header, rows)}\n\n"
        + (f"{best}\n\n" if best else "")
        + "best = lowest val_loss / highest val_accuracy, with its epoch (counted from 1); wall s = the MLflow run's "
        "start to end (building, training, testing, logging; the data is loaded before the run starts).\n\n"
        f"![validation loss and accuracy per epoch]({plot_name})\n\n"
        f"Runs:\n\n{runs}\n"
    )


# ---------------------------------------------------------------------------------------------
# Command line


def _slug(targets: list[str]) -> str:
    """The output folder's name: the targets, letters of any script kept ("Größe", "学习率").

    When a character had to go (a space, a slash) or the name was cut, a short hash of the full
    text follows, so distinct targets never share a folder ("a b" vs "a-b").
    """
    text = "_".join(t[:8] if RUN_ID.fullmatch(t) else t for t in targets)
    slug = re.sub(r"[^\w.-]+", "-", text).strip(".")[:80]  # \w: any script's letters and digits
    if slug == text:
        return slug
    return f"{slug[:71]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", help="an experiment name, a sweep's parent run id, or run ids")
    parser.add_argument("--tracking-uri", default=None,
                        help=f"default: $MLFLOW_TRACKING_URI, else {store.DEFAULT_URI}")
    parser.add_argument("--last", type=int, default=None, help="only the N most recent runs of each experiment/sweep")
    parser.add_argument("--out", type=Path, default=None, help="folder for compare.png and report.md "
                        "(default: outputs/compare/<targets>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the plot and report to the parent run")
    args = parser.parse_args(argv)
    if args.last is not None and args.last < 1:
        parser.error(f"--last {args.last}: must be >= 1")

    uri = store.tracking_uri(args.tracking_uri)
    args.command = "python -m src.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        return _compare(args, uri)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _compare(args, uri: str) -> int:
    database = store.sqlite_path(uri)
    if database is not None and not database.is_file():
        raise CompareError(f"there is no tracking store at {uri}.\nFix: train first, or pass --tracking-uri.")
    if database is not None:
        try:
            store.not_sqlite(database)
        except store.TrackingError as err:
            raise CompareError(str(err)) from None
    client = MlflowClient(uri)
    try:
        liveness.reconcile(client)  # a run whose process died is shown FAILED, not RUNNING forever
        summaries = [summarise(client, r) for r in resolve(client, args.targets, args.last)]
    except MlflowException as err:
        raise CompareError(f"the tracking store {uri} refused the query: {err.message}") from err

    header, rows = table(summaries)
    print(text_table(header, rows))
    keys = differing_params(summaries)
    label = dict(zip((s.run_id for s in summaries), labels(summaries, keys)))
    best = best_line(summaries, label)
    print(f"\n{best}")
    for line in sweep_progress(client, args.targets):
        print(line)

    out = args.out or PROJECT_ROOT / "outputs" / "compare" / _slug(args.targets)
    out.mkdir(parents=True, exist_ok=True)
    title = f"Comparison of {' '.join(args.targets)}"
    plot = plots.compare({label[s.run_id]: s.history for s in summaries}, out / "compare.png", title=title)
    md = out / "report.md"
    md.write_text(report(title, args.command, uri, summaries, header, rows, plot.name, best))
    print(f"\nplot:   {plot}\nreport: {md}")

    parents = {s.parent for s in summaries}
    if len(parents) == 1 and None not in parents and not args.no_log:
        parent = parents.pop()
        client.log_artifact(parent, str(plot), artifact_path="compare")
        client.log_artifact(parent, str(md), artifact_path="compare")
        print(f"logged compare/{plot.name} and compare/{md.name} to the parent run {parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
