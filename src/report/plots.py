"""Training-history figures (the plot the lab could not draw), written with matplotlib; `Workers` draws them in
worker processes for a launcher that ends many runs at once."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


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


class Workers:
    """History plots drawn by worker processes (python -m src.report.plots, `serve`), for a launcher that ends many runs
    one after another (the fused launcher): it asks for every plot at once, then takes each as it ends that run.

    A plot is ~150 ms of matplotlib, a third of a fused member's end. Plain subprocesses, not multiprocessing: a
    fork after JAX started its threads is unsafe, and a spawned child would import the launching script again. In
    their own session, so a Ctrl-C reaches only the launcher. A plot a worker did not draw (it failed, died or hung)
    is drawn in the calling process by `take`: a run never lacks its plot."""

    TIMEOUT_S = 120  # a worker's answer for one plot

    def __init__(self, count: int):
        import concurrent.futures
        import queue
        import subprocess
        import sys
        import tempfile

        from ..paths import PROJECT_ROOT

        self._folder = tempfile.TemporaryDirectory(prefix="le5-plots-")
        self._pending: dict[int, tuple] = {}
        self._warned = False
        self.processes = []  # the workers
        try:
            for _ in range(count):
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "src.report.plots"], cwd=PROJECT_ROOT, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, text=True, start_new_session=True))
        except OSError as err:  # no processes to spare: the plots are drawn here
            log.warning("Plot workers did not start (%s); drawing the plots in this process", err)
        self._idle: queue.Queue = queue.Queue()
        for worker in self.processes:
            self._idle.put(worker)
        # one thread per worker, waiting on its pipe (the GIL is free meanwhile)
        self._threads = concurrent.futures.ThreadPoolExecutor(max(1, len(self.processes)), "le5-plots")

    @staticmethod
    def count(plots: int) -> int:
        """A core for the launcher, the others (at most 8) for `plots` plots; at least one worker."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(plots, 8, cores - 1))

    def _draw(self, request: dict) -> Path:
        worker = self._idle.get()  # as many threads as workers: one is free
        try:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited (status {worker.returncode})")
            worker.stdin.write(json.dumps(request) + "\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
            if not line:
                raise RuntimeError("the worker exited")
            reply = json.loads(line)
            if "error" in reply:
                raise RuntimeError(reply["error"])
            return Path(reply["path"])
        finally:
            self._idle.put(worker)

    def submit(self, key: int, history: dict[str, list[float]], title: str) -> None:
        """Ask for the plot of `key` (a Hydra job number) now; `take` writes it where its run needs it."""
        request = {"history": history, "path": str(Path(self._folder.name) / f"{key}.png"), "title": title}
        future = self._threads.submit(self._draw, request) if self.processes else None
        self._pending[key] = (future, history, title)

    def take(self, key: int, path: Path) -> None:
        """Write `key`'s plot to `path`: the worker's figure, or one drawn here if no worker drew it."""
        import shutil

        future, history_, title = self._pending.pop(key)
        if future is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(future.result(timeout=self.TIMEOUT_S), path)
                return
            except Exception as err:  # noqa: BLE001 - a failed worker costs this plot's time, not the run
                (log.debug if self._warned else log.warning)(
                    "A plot worker did not draw job #%d's plot (%s: %s); drawing it in this process", key,
                    type(err).__name__, err)
                self._warned = True
        history(history_, path, title=title)

    def close(self) -> None:
        """Stop the workers (their input closes: they exit) and remove what they drew and nobody took."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        for worker in self.processes:
            try:
                worker.stdin.close()
                worker.wait(timeout=5)
            except Exception:  # noqa: BLE001 - a worker stuck in a plot, or its pipe broken: it goes anyway
                worker.kill()
        self._folder.cleanup()


def serve(requests, replies) -> None:
    """A plot worker (python -m src.report.plots, started by `Workers`): one JSON request a line
    ({"history", "path", "title"}), one JSON reply a line ({"path"} or {"error"}), until its input closes."""
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
