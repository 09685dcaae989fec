"""src/report/plots.py: the training-history figure, and the worker processes that draw it for the fused launcher."""

from __future__ import annotations

import pytest


@pytest.mark.processes  # plot worker processes
def test_plot_workers_draw_the_figure_a_run_would_draw_and_a_dead_worker_costs_only_time(tmp_path):
    """The fused launcher's plot workers (plots.Workers: python -m src.plots) draw byte for byte what src.plots
    draws in-process, each member its own; with every worker killed, each plot is still drawn, here."""
    from src.report import plots

    histories = {n: {"loss": [0.5, 0.4 - n / 100], "val_loss": [0.45, 0.41], "accuracy": [0.8, 0.9],
                     "val_accuracy": [0.82, 0.85 + n / 100]} for n in range(3)}
    drawn = plots.Workers(2)
    try:
        for n, history in histories.items():
            drawn.submit(n, history, f"job {n}")
        for n, history in histories.items():
            drawn.take(n, tmp_path / "workers" / f"{n}.png")
            plots.history(history, tmp_path / "here" / f"{n}.png", title=f"job {n}")
            assert (tmp_path / "workers" / f"{n}.png").read_bytes() == (tmp_path / "here" / f"{n}.png").read_bytes()
        assert len({(tmp_path / "workers" / f"{n}.png").read_bytes() for n in histories}) == 3

        for worker in drawn.processes:
            worker.kill()
            worker.wait()
        drawn.submit(9, histories[0], "job 0")
        drawn.take(9, tmp_path / "after" / "9.png")
        assert (tmp_path / "after" / "9.png").read_bytes() == (tmp_path / "here" / "0.png").read_bytes()
    finally:
        drawn.close()
    assert all(worker.poll() is not None for worker in drawn.processes)
