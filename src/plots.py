"""Training-history figures (the plot the lab could not draw), written with matplotlib."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402


def history(history: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train vs validation, side by side; epochs counted from 1."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label, style in ((metric, "train", "o-"), (f"val_{metric}", "validation", "s--")):
            if key in history:
                epochs = range(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], style, label=label, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs 1, 2, not 1.0, 1.2, ... (fewer labels to draw)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare(histories: dict[str, dict[str, list[float]]], path: Path, title: str = "") -> Path:
    """Validation loss and accuracy per epoch, one colour per run; training loss/accuracy dotted in the same colour.

    `histories` maps a run's label to its metric lists (loss, accuracy, val_loss, val_accuracy). The loss axis
    turns logarithmic when the losses span more than two decades (a diverged run next to converged ones).
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (label, h) in enumerate(histories.items()):
        colour = colours[n % len(colours)]
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for key, style, extra in ((f"val_{metric}", "o-", {"label": label}), (metric, ":", {"alpha": 0.6})):
                if h.get(key):
                    ax.plot(range(1, len(h[key]) + 1), h[key], style, color=colour, markersize=3, **extra)
    losses = [v for h in histories.values() for k in ("loss", "val_loss") for v in h.get(k, []) if v == v and v > 0]
    if losses and max(losses) / min(losses) > 100:
        axes[0].set_yscale("log")
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"validation {metric} (solid), training (dotted)")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, names = axes[0].get_legend_handles_labels()
    bottom = 0.0
    if handles:  # below the axes, as many columns as the longest label allows; the figure grows per row
        ncol = max(1, min(len(names), 150 // (max(len(n) for n in names) + 8)))
        legend_rows = -(-len(names) // ncol)
        fig.set_figheight(4.5 + 0.22 * legend_rows)
        fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize="small", frameon=False)
        bottom = (0.22 * legend_rows + 0.15) / fig.get_figheight()
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def serve(requests, replies) -> None:
    """A plot worker (python -m src.plots, started by the fused launcher): one JSON request a line
    ({"history", "path", "title"}), one JSON reply a line ({"path"} or {"error"}), until its input closes."""
    import json

    for line in requests:
        try:
            request = json.loads(line)
            reply = {"path": str(history(request["history"], Path(request["path"]), request["title"]))}
        except Exception as err:  # noqa: BLE001 - said to the launcher, which then draws the plot itself
            reply = {"error": f"{type(err).__name__}: {err}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    import sys

    replies, sys.stdout = sys.stdout, sys.stderr  # a stray print cannot break the replies' lines
    serve(sys.stdin, replies)
