"""A sweep's figures, drawn with matplotlib from plain values (no MLflow): what answers the sweep's question.

- `metric_vs_key`: a swept key against the monitored metric, one line per value of a second swept key, error bars
  over seeds (a group's std); a log axis when the key's values span more than a decade;
- `parallel`: parallel coordinates when three or more keys are swept, each run a line coloured by the metric;
- `curves`: per-epoch validation curves at any count of runs: one line per group (its mean, a band from its min to
  its max), the legend beside the axes, or, beyond `LEGEND_MAX` groups, a colour bar of the metric instead.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

LEGEND_MAX = 10  # more groups than this: a colour bar of the metric, no legend
LINES_MAX = 12  # lines of metric_vs_key beyond which only the best are drawn
UNITS = {"loss": "cross-entropy", "accuracy": "fraction correct"}


def metric_label(metric: str) -> str:
    """An axis label with the metric's unit: 'val_loss (cross-entropy)', 'val_accuracy (fraction correct)'."""
    for end, unit in UNITS.items():
        if metric.endswith(end):
            return f"{metric} ({unit})"
    return metric


def numeric(values) -> list[float] | None:
    """The values as numbers, or None when one of them is not a number."""
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def spans_decades(values: list[float]) -> bool:
    """Whether positive values span more than a decade (a log axis then)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10


def _save(fig, path: Path, dpi: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def metric_vs_key(points: list[dict], x_key: str, line_key: str | None, metric: str, path: Path,
                  lower_is_better: bool = True) -> Path:
    """One point per group: `points` are {"x": value of x_key, "line": value of line_key (or None), "mean", "std",
    "n"}. Numeric x values are placed as numbers (log axis beyond a decade), others evenly. At most LINES_MAX lines:
    those whose best point is best."""
    xs = numeric(p["x"] for p in points)
    order = sorted({p["x"] for p in points}, key=lambda v: float(v)) if xs is not None else \
        list(dict.fromkeys(p["x"] for p in points))
    position = {v: (float(v) if xs is not None else i) for i, v in enumerate(order)}
    lines: dict = {}
    for p in points:
        lines.setdefault(p["line"], []).append(p)
    sign = 1 if lower_is_better else -1
    best_of = {k: min((sign * p["mean"] for p in ps if math.isfinite(p["mean"])), default=math.inf)
               for k, ps in lines.items()}
    shown = sorted(lines, key=lambda k: best_of[k])[:LINES_MAX]
    shown = [k for k in lines if k in shown]  # in their first-seen order
    fig, ax = plt.subplots(figsize=(8, 5))
    for k in sorted(shown, key=lambda v: (numeric([v]) or [0])[0] if v is not None else 0):
        ps = sorted((p for p in lines[k] if math.isfinite(p["mean"])), key=lambda p: position[p["x"]])
        if not ps:
            continue
        label = f"{line_key}={k}" if line_key else None
        ax.errorbar([position[p["x"]] for p in ps], [p["mean"] for p in ps],
                    yerr=[p["std"] if p["n"] > 1 else 0 for p in ps], marker="o", capsize=4, label=label)
    if xs is not None and spans_decades([position[v] for v in order]):
        ax.set_xscale("log")
    if xs is None:
        ax.set_xticks(range(len(order)), [str(v) for v in order])
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{metric_label(metric)}, best epoch")
    seeds = max((p["n"] for p in points), default=1)
    spread = f"mean ± std over seeds (up to {seeds} a point)" if seeds > 1 else "one run a point"
    cut = f"; the best {len(shown)} of {len(lines)} lines" if len(shown) < len(lines) else ""
    ax.set_title(f"{metric} (best epoch) against {x_key}: {spread}{cut}", fontsize="medium")
    ax.grid(alpha=0.3)
    if line_key:
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return _save(fig, path)


def parallel(runs: list[dict], keys: list[str], metric: str, path: Path) -> Path:
    """Parallel coordinates: one vertical axis per swept key and one for `metric`; `runs` are {key: value...,
    metric: number}. Numeric keys are scaled to their range (logarithmically beyond a decade), other values
    spaced evenly; each run is a line coloured by its metric, runs without a finite metric grey and dashed."""
    axes_values = []
    for k in keys:
        raw = [r.get(k) for r in runs]
        nums = numeric(raw)
        if nums is not None:
            log_scale = spans_decades(nums)
            scaled = [math.log10(v) for v in nums] if log_scale else nums
            low, high = min(scaled), max(scaled)
            ticks = sorted(set(nums))
            if len(ticks) > 8:
                ticks = [ticks[0], ticks[len(ticks) // 2], ticks[-1]]
            place = lambda v, low=low, high=high, log_scale=log_scale: (  # noqa: E731
                ((math.log10(v) if log_scale else v) - low) / (high - low) if high > low else 0.5)
            axes_values.append(([place(v) for v in nums], [(place(t), f"{t:g}") for t in ticks]))
        else:
            order = list(dict.fromkeys(str(v) for v in raw))
            place = {v: (i / (len(order) - 1) if len(order) > 1 else 0.5) for i, v in enumerate(order)}
            axes_values.append(([place[str(v)] for v in raw], [(place[v], v) for v in order]))
    scores = [float(r.get(metric, math.nan)) for r in runs]
    finite = [s for s in scores if math.isfinite(s)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    axes_values.append(([(s - low) / (high - low) if math.isfinite(s) and high > low else 0.5 for s in scores],
                        [(0.0, f"{low:.4g}"), (1.0, f"{high:.4g}")] if finite else []))
    columns = len(axes_values)
    fig, ax = plt.subplots(figsize=(max(7, 2 * columns), 5))
    segments = [[(c, axes_values[c][0][i]) for c in range(columns)] for i in range(len(runs))]
    good = [i for i, s in enumerate(scores) if math.isfinite(s)]
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        ax.add_collection(LineCollection([segments[i] for i in bad], colors="grey", linestyles="dashed",
                                         linewidths=0.8, alpha=0.6, label=f"no finite {metric} ({len(bad)})"))
    if good:
        lines = LineCollection([segments[i] for i in good], cmap="viridis", linewidths=1.0,
                               alpha=0.8 if len(good) < 100 else 0.4)
        lines.set_array([scores[i] for i in good])
        ax.add_collection(lines)
        fig.colorbar(lines, ax=ax, label=f"{metric_label(metric)}, best epoch")
    for c, (_, ticks) in enumerate(axes_values):
        ax.axvline(c, color="black", linewidth=0.8)
        for y, text in ticks:
            ax.text(c + 0.03, y, text, fontsize="x-small", va="center")
    ax.set_xlim(-0.1, columns - 0.9)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(range(columns), [*keys, f"{metric}\n(best epoch)"], fontsize="small")
    ax.set_yticks([])
    ax.set_title(f"{metric} (best epoch) of each of {len(runs)} runs across the swept keys", fontsize="medium")
    if bad:
        ax.legend(fontsize="small", loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def curves(groups: list[dict], path: Path, title: str = "", metric: str = "val_loss") -> Path:
    """Validation loss and accuracy per epoch, one line per group: `groups` are {"label", "score" (its mean
    `metric`, for the colour bar), "histories": [each run's {metric: [value per epoch]}]}. A group of several runs
    is drawn as its mean with a band from min to max. Beyond LEGEND_MAX groups the lines are coloured by `score`
    with a colour bar instead of a legend. Epoch ticks are whole numbers."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    many = len(groups) > LEGEND_MAX
    scores = [g["score"] for g in groups if math.isfinite(g["score"])]
    norm = matplotlib.colors.Normalize(min(scores), max(scores)) if scores and many else None
    cmap = matplotlib.colormaps["viridis"]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    longest = 1
    for n, g in enumerate(groups):
        if many:
            colour = cmap(norm(g["score"])) if norm is not None and math.isfinite(g["score"]) else "grey"
        else:
            colour = cycle[n % len(cycle)]
        for ax, key in zip(axes, ("val_loss", "val_accuracy")):
            runs = [h[key] for h in g["histories"] if h.get(key)]
            if not runs:
                continue
            epochs = max(len(r) for r in runs)
            longest = max(longest, epochs)
            columns = [[r[e] for r in runs if e < len(r) and math.isfinite(r[e])] for e in range(epochs)]
            xs = [e + 1 for e, c in enumerate(columns) if c]
            mean = [sum(c) / len(c) for c in columns if c]
            ax.plot(xs, mean, "o-" if epochs < 30 else "-", color=colour, markersize=3,
                    linewidth=1.2 if not many else 0.9, label=None if many else f"{g['label']} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(xs, [min(c) for c in columns if c], [max(c) for c in columns if c], color=colour,
                                alpha=0.15 if not many else 0.06, linewidth=0)
    for ax, key in zip(axes, ("val_loss", "val_accuracy")):
        ax.set_xlabel("epoch (counted from 1)")
        ax.set_ylabel(metric_label(key))
        ax.set_title(f"{key} per epoch" + (": group mean, band min–max" if any(len(g["histories"]) > 1
                                                                            for g in groups) else ""),
                     fontsize="medium")
        ax.grid(alpha=0.3)
        ax.set_xlim(0.5, longest + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if longest <= 3:
            ax.set_xticks(range(1, longest + 1))
    losses = [v for g in groups for h in g["histories"] for v in h.get("val_loss", []) if v == v and v > 0]
    if losses and max(losses) / min(losses) > 100:
        axes[0].set_yscale("log")
    if many and norm is not None:
        mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(mappable, ax=list(axes), label=f"group mean {metric_label(metric)}, best epoch")
    elif not many:
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.8, 0.5), fontsize="small",
                       frameon=False)
    if title:
        fig.suptitle(title)
    if not many:
        fig.tight_layout(rect=(0, 0, 0.8, 1))
    return _save(fig, path, dpi=80)
