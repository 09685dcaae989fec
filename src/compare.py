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
from .errors import UserError
from .tracking import liveness, names, status, store
from .report import groups as grouping
from .report import plots, sweep_plots
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
    try:
        run_id = store.run_id_of(client, target)  # a full id, or a unique prefix of >= 6 characters
    except store.TrackingError as err:
        raise CompareError(str(err)) from None
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            run = None
        if run is not None:
            children = store.children(client, run_id, run.info.experiment_id)
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


def summarise(client: MlflowClient, run, histories: dict | None = None) -> RunSummary:
    """A run's summary; its histories read from the store, one call per metric, unless `histories` (run id ->
    metric -> values per epoch, from `read_histories`) has them."""
    info, data = run.info, run.data
    if histories is not None:
        history = {k: v for k, v in histories.get(info.run_id, {}).items() if k in data.metrics}
    else:
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


BULK_CHUNK = 500  # run ids per bulk query (SQLite allows 999 bound values in older builds)


def read_histories(client: MlflowClient, runs: list) -> dict[str, dict[str, list[float]]]:
    """run id -> metric -> values per epoch (by step) for HISTORY_KEYS, for every run at once.

    MLflow's get_metric_history is one query per run and metric: 4,000 round trips for a 1,000-run sweep. A
    database store (SQLAlchemy) answers get_metric_history_bulk, one query per metric and BULK_CHUNK runs; other
    stores (a server) are asked run by run, in a few threads."""
    wanted = [(r.info.run_id, k) for r in runs for k in HISTORY_KEYS if k in r.data.metrics]
    points: dict[str, dict[str, list]] = {}
    backend = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk = getattr(backend, "get_metric_history_bulk", None)
    if bulk is not None:
        for key in HISTORY_KEYS:
            run_ids = [run_id for run_id, k in wanted if k == key]
            for start in range(0, len(run_ids), BULK_CHUNK):
                for found in bulk(run_ids[start:start + BULK_CHUNK], key, max_results=10**9):
                    points.setdefault(found.run_id, {}).setdefault(key, []).append(found)  # a Metric with its run_id
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            for (run_id, key), found in zip(wanted, pool.map(lambda w: client.get_metric_history(*w), wanted)):
                points.setdefault(run_id, {})[key] = list(found)
    return {run_id: {k: [m.value for m in sorted(ms, key=lambda m: m.step)] for k, ms in metrics.items()}
            for run_id, metrics in points.items()}


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


def monitor_of(summaries: list[RunSummary]) -> str:
    """The runs' own trainer.monitor when they share one, else val_loss."""
    monitors = {s.params.get("trainer.monitor") for s in summaries}
    return monitors.pop() if len(monitors) == 1 and None not in monitors else "val_loss"


def best_run(summaries: list[RunSummary]) -> tuple[RunSummary, str, float, int] | None:
    """The best finished run by the objective src.train returns to sweepers (its best epoch's trainer.monitor),
    with that monitor, value and epoch; None when no finished run has it. The runs' own trainer.monitor when they
    share one, else val_loss."""
    monitor = monitor_of(summaries)
    scored = [(s, _best(s.history.get(monitor, []), monitor)) for s in summaries if s.status == status.FINISHED]
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
    """For each target that is a sweep's parent with a manifest (src/sweeps/manifest.py): how far its points got, and the
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


def report(title: str, command: str, uri: str, summaries, header, rows, plot_name: str, best: str = "",
           grouped: tuple[list[str], list[list[str]]] | None = None, sweep_plots_: list[tuple[str, str]] = (),
           warnings: list[str] = ()) -> str:
    """report.md: the group table (when `grouped`), every run's row, the best line, the plots, each run's status."""
    runs = "\n".join(
        f"- `{s.run_id}` {s.name} ({s.status}" + (f": {s.failure}" if s.failure else "") + ")" for s in summaries
    )
    groups_part = ""
    if grouped is not None:
        groups_part = (f"Groups (runs that differ only in seed and in settings that do not change what is trained), "
                       f"best first:\n\n{markdown_table(*grouped)}\n\n{GROUP_NOTE}\n\nEvery run:\n\n")
    return (
        f"# {title}\n\n"
        f"Made by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from `{uri}`.\n\n"
        + "".join(f"**{w}**\n\n" for w in warnings)
        + groups_part
        + f"{markdown_table(header, rows)}\n\n"
        + (f"{best}\n\n" if best else "")
        + "best = lowest val_loss / highest val_accuracy, with its epoch (counted from 1); wall s = the MLflow run's "
        "start to end (building, training, testing, logging; the data is loaded before the run starts).\n\n"
        f"![validation loss and accuracy per epoch]({plot_name})\n\n"
        + "".join(f"![{alt}]({name})\n\n" for name, alt in sweep_plots_)
        + f"Runs:\n\n{runs}\n"
    )


# ---------------------------------------------------------------------------------------------
# Groups: the runs of one config over seeds (src/report/groups.py does the arithmetic)

GROUP_NOTE = ("Each cell: the mean ± sample std over the group's finished runs with a finite value, [min–max]; "
              "\"(2 of 3: 1 nan)\" says how many runs were left out of the mean and why. n = runs in the group.")
COLUMNS = (("best val_loss", "val_loss", "best"), ("final val_loss", "val_loss", "final"),
           ("best val_acc", "val_accuracy", "best"), ("final val_acc", "val_accuracy", "final"))


def member(s: RunSummary) -> grouping.Member:
    """A run's plain values for the groups: best and final validation metrics, epochs, tests, wall time."""
    values = {}
    for _, metric, kind in COLUMNS:
        history = s.history.get(metric, [])
        if history:
            found = _best(history, metric)
            values[f"{kind} {metric}"] = found[0] if (kind == "best" and found) else (
                math.nan if kind == "best" else history[-1])
    values.update({k: v for k, v in s.test.items()})
    values["epochs"] = float(s.epochs)
    if s.wall_s is not None:
        values["wall s"] = s.wall_s
    return grouping.Member(s.run_id, s.params, s.status == status.FINISHED, values)


def group_table(ranked: list[grouping.Group], keys: list[str], monitor: str, best: grouping.Group | None,
                spread: bool = False) -> tuple[list[str], list[list[str]]]:
    """One row per group, best first: its keys' values, n, each metric's mean ± std (with [min–max] when
    `spread`; always for the ranking metric), tests, epochs, its best run."""
    objective = f"best {monitor}"
    header = ["", *keys, "n", *(name for name, _, _ in COLUMNS), "test_acc", "epochs", "best run"]
    rows = []
    for g in ranked:
        values = dict(g.key)
        best_one = grouping.best_member(g.members, objective, monitor)
        rows.append([
            "*" if g is best else "",
            *[str(values.get(k, "-")) for k in keys],
            str(g.n),
            *[g.stat(f"{kind} {metric}").text(spread=spread or f"{kind} {metric}" == objective)
              for _, metric, kind in COLUMNS],
            g.stat("test_accuracy").text(spread=spread),
            g.stat("epochs").text(digits=1, spread=spread),
            best_one.run_id[:8] if best_one else "-",
        ])
    return header, rows


def best_group_line(ranked: list[grouping.Group], members: list[grouping.Member], monitor: str,
                    label: dict[str, str]) -> str:
    objective = f"best {monitor}"
    word = "lowest" if config.lower_is_better(monitor) else "highest"
    scored = [g for g in ranked if g.stat(objective).n]
    if not scored:
        return f"Best group: none (no finished run has a finite {monitor})."
    g = scored[0]
    line = (f"Best group: {g.label(_short)} (n={g.n}), mean best-epoch {monitor} {g.stat(objective).text()} "
            f"({word} group mean of the value src.train returns to sweepers)")
    one = grouping.best_member(members, objective, monitor)
    if one is not None:
        line += (f"\nBest single run: {one.run_id[:8]} ({label[one.run_id]}), {monitor} {one.value(objective):.4f}"
                 f"; run id {one.run_id}")
    return line


def _top(rows: list[list[str]], top: int, what: str) -> tuple[list[list[str]], str]:
    """The first `top` rows and a line counting the rest (empty when none is left out)."""
    if top <= 0 or len(rows) <= top:
        return rows, ""
    return rows[:top], f"... and {len(rows) - top} more {what} (all of them in report.md; --top N shows more)"


# ---------------------------------------------------------------------------------------------
# The sweep's figures (src/report/sweep_plots.py draws them)

HANDFUL = 8  # runs drawn one line each on compare.png; beyond, one line per group


def curves_plot(summaries: list[RunSummary], shown: list[grouping.Group], label: dict[str, str], monitor: str,
                path: Path, title: str) -> Path:
    """compare.png: one line per run for a handful of runs without repeated seeds, else one per group."""
    if len(summaries) <= HANDFUL and not grouping.repeated(shown):
        return plots.compare({label[s.run_id]: s.history for s in summaries}, path, title=title)
    by_id = {s.run_id: s for s in summaries}
    return sweep_plots.curves(
        [{"label": g.label(_short) if g.key else label[g.members[0].run_id],
          "score": g.stat(f"best {monitor}").mean,
          "histories": [by_id[m.run_id].history for m in g.members]} for g in shown],
        path, title=title, metric=monitor)


def sweep_figures(members: list[grouping.Member], monitor: str, out: Path) -> list[tuple[Path, str]]:
    """sweep.png (a swept key against the metric, seeds aggregated) when a key besides seed varies, and
    parallel.png (parallel coordinates) when three or more keys vary; (path, description) of each drawn."""
    objective = f"best {monitor}"
    keys = grouping.varying(members)
    swept = [k for k in keys if k != grouping.SEED]
    drawn = []
    groups = grouping.group(members)
    numeric = [k for k in swept if sweep_plots.numeric(m.params.get(k) for m in members) is not None]
    if numeric and len(groups) > 1:  # a swept number to put on the x axis
        distinct = {k: len({m.params.get(k) for m in members}) for k in swept}
        x_key = max(numeric, key=lambda k: distinct[k])
        others = [k for k in swept if k != x_key]
        points = []
        for g in groups:
            values = dict(g.key)
            stat = g.stat(objective)
            points.append({"x": values.get(x_key, "-"),
                           "line": " ".join(f"{_short(k)}={values.get(k, '-')}" for k in others) or None,
                           "mean": stat.mean, "std": stat.std, "n": stat.n})
        line_key = " ".join(_short(k) for k in others) or None
        path = sweep_plots.metric_vs_key(points, x_key, line_key, monitor, out / "sweep.png",
                                         lower_is_better=config.lower_is_better(monitor))
        drawn.append((path, f"{monitor} against {x_key}" + (f", one line per {line_key}" if line_key else "")))
    if len(keys) >= 3:
        runs = [{**{k: m.params.get(k, "-") for k in keys}, monitor: m.value(objective) if m.finished else math.nan}
                for m in members]
        drawn.append((sweep_plots.parallel(runs, keys, monitor, out / "parallel.png"),
                      f"parallel coordinates of {', '.join(keys)} and {monitor}"))
    return drawn


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
    parser.add_argument("--by", default=None, metavar="KEY",
                        help="group the runs by this setting (e.g. model, optimizer.learning_rate) instead of by "
                        "everything but the seed")
    parser.add_argument("--no-group", action="store_true", help="list every run, seeds not aggregated")
    parser.add_argument("--top", type=int, default=20, metavar="N",
                        help="rows of the terminal's table (the best first when there are more; 0: all); "
                        "report.md lists all (default 20)")
    args = parser.parse_args(argv)
    if args.last is not None and args.last < 1:
        parser.error(f"--last {args.last}: must be >= 1")
    if args.by is not None and args.no_group:
        parser.error("--by and --no-group: choose one")

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
    if store.is_server(uri):
        try:  # one screen for a server that does not answer or refuses these credentials, before any query
            store.check(uri)
            store.authenticate(uri)
        except UserError as err:
            raise CompareError(str(err)) from None
    client = MlflowClient(uri)
    try:
        liveness.reconcile(client)  # a run whose process died is shown FAILED, not RUNNING forever
        runs = resolve(client, args.targets, args.last)
        histories = read_histories(client, runs)
        summaries = [summarise(client, r, histories) for r in runs]
    except MlflowException as err:
        raise CompareError(f"the tracking store {uri} refused the query: {err.message}") from err

    monitor = monitor_of(summaries)
    objective = f"best {monitor}"
    members = [member(s) for s in summaries]
    keys = differing_params(summaries)
    label = dict(zip((s.run_id for s in summaries), labels(summaries, keys)))
    warnings = []
    found = grouping.datasets(members)
    if len(found) > 1:
        warnings.append(f"warning: these runs are of {len(found)} datasets ({', '.join(found)}): they are grouped "
                        f"apart, and their metrics do not compare.")
    try:
        by = grouping.by_keys(members, args.by) if args.by else None
    except grouping.UnknownKey as err:
        raise CompareError(str(err)) from None
    groups = grouping.group(members, by)
    shown = groups if (args.by or grouping.repeated(groups)) and not args.no_group else \
        [grouping.Group((), [m]) for m in members]
    grouped = None

    header, rows = table(summaries)
    for line in warnings:
        print(line)
    if shown is groups:
        ranked = grouping.ranked(groups, objective, monitor)
        best_group = next((g for g in ranked if g.stat(objective).n), None)
        group_keys = [k for k, _ in groups[0].key]
        g_header, g_rows = group_table(ranked, group_keys, monitor, best_group)
        top_rows, more = _top(g_rows, args.top, "groups")
        print(f"{len(summaries)} runs in {len(groups)} groups (" + (f"by {', '.join(by)}" if by else
              "runs that differ only in seed") + "), best first; * marks the best group mean:")
        print(text_table(g_header, top_rows))
        if more:
            print(more)
        best = best_group_line(ranked, members, monitor, label)
        grouped = group_table(ranked, group_keys, monitor, best_group, spread=True)
    else:
        order = rows
        if args.top > 0 and len(rows) > args.top:  # the best first, when not all fit
            sign = 1 if config.lower_is_better(monitor) else -1
            score = {m.run_id[:8]: (sign * m.value(objective) if m.finished and math.isfinite(m.value(objective))
                                    else math.inf) for m in members}
            order = sorted(rows, key=lambda r: score[r[0]])
            print(f"{len(rows)} runs, the best {args.top} by best-epoch {monitor}:")
        top_rows, more = _top(order, args.top, "runs")
        print(text_table(header, top_rows))
        if more:
            print(more)
        best = best_line(summaries, label)
    print(f"\n{best}")
    for line in sweep_progress(client, args.targets):
        print(line)

    out = args.out or PROJECT_ROOT / "outputs" / "compare" / _slug(args.targets)
    out.mkdir(parents=True, exist_ok=True)
    title = f"Comparison of {' '.join(args.targets)}"
    plot = curves_plot(summaries, shown, label, monitor, out / "compare.png", title)
    figures = sweep_figures(members, monitor, out) if len(found) == 1 else []
    md = out / "report.md"
    md.write_text(report(title, args.command, uri, summaries, header, rows, plot.name, best, grouped=grouped,
                         sweep_plots_=[(p.name, alt) for p, alt in figures], warnings=warnings))
    print(f"\nplot:   {plot}")
    for path, _ in figures:
        print(f"plot:   {path}")
    print(f"report: {md}")

    parents = {s.parent for s in summaries}
    if len(parents) == 1 and None not in parents and not args.no_log:
        parent = parents.pop()
        logged = [plot, *(p for p, _ in figures), md]
        for path in logged:
            client.log_artifact(parent, str(path), artifact_path="compare")
        files = [f"compare/{p.name}" for p in logged]
        print(f"logged {', '.join(files[:-1])} and {files[-1]} to the parent run {parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
