"""`python -m src.compare <parent>` on a 1,000-child sweep: wall time and peak memory (targets: <= 15 s, < 1 GB).

    python -m benchmarks.bench_compare [--children 1000] [--epochs 20] [--repeats 1]

Fills a real SQLite store through MLflow's API (MlflowClient.log_batch): a parent and `children` runs, three keys
varied (learning rate x units x seed, 10 x 10 x 10), `epochs` epochs of loss, accuracy, val_loss, val_accuracy
each; then times compare on the parent in a fresh process (harness.spawn_command: its own peak RSS).
"""

from __future__ import annotations

import random
import sys
import time

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from benchmarks import harness

TARGET_S, TARGET_MB = 15.0, 1024.0


def fill(uri: str, children: int, epochs: int) -> str:
    """The sweep's parent id, after logging its children."""
    client = MlflowClient(uri)
    experiment = client.create_experiment("bench_compare")
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    rng = random.Random(0)
    t0 = int(time.time() * 1000)
    for n in range(children):
        lr, units, seed = 10 ** (-4 + 3 * (n // 100) / 9), 32 * (1 + (n // 10) % 10), n % 10
        run = client.create_run(experiment, start_time=t0 + n, tags={"mlflow.parentRunId": parent})
        floor = 0.1 + abs(lr - 3e-3) * 20 + 1 / units
        val = [floor + 1 / (e + 1) + rng.gauss(0, 0.01) for e in range(epochs)]
        history = {"loss": [v * 0.9 for v in val], "val_loss": val, "accuracy": [1 - v / 3 for v in val],
                   "val_accuracy": [1 - v / 3 for v in val]}
        metrics = [Metric(k, v, t0 + e, e) for k, vs in history.items() for e, v in enumerate(vs)]
        params = {"optimizer.learning_rate": f"{lr:.3g}", "model.units": str(units), "seed": str(seed),
                  "dataset.name": "mnist", "trainer.epochs": str(epochs), "trainer.monitor": "val_loss",
                  "data_dir": "/data"}
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag("sweep.job_num", str(n))])
        client.set_terminated(run.info.run_id, "FINISHED", end_time=t0 + n + 60_000)
    client.set_terminated(parent)
    return parent


def main() -> int:
    p = harness.parser(__doc__.splitlines()[0], repeats=1)
    p.add_argument("--children", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=20)
    args = p.parse_args()
    workspace = harness.Workspace()
    try:
        start = time.time()
        parent = fill(workspace.store, args.children, args.epochs)
        print(f"filled {args.children} runs x {args.epochs} epochs x 4 metrics in {time.time() - start:.1f}s")
        out = workspace.path / "compare"
        command = [sys.executable, "-m", "src.compare", parent, "--tracking-uri", workspace.store, "--out", str(out)]
        runs = [harness.spawn_command(command, env={"MLFLOW_TRACKING_URI": workspace.store})
                for _ in range(args.repeats)]
        wall, rss = harness.median(r["wall_s"] for r in runs), harness.median(r["peak_rss_mb"] for r in runs)
        figures = {"children": args.children, "epochs": args.epochs, "wall_s": wall, "peak_rss_mb": rss,
                   "wall_verdict": harness.verdict(wall, TARGET_S), "rss_verdict": harness.verdict(rss, TARGET_MB)}
        print(harness.table([[f"{wall:.1f}", f"{rss:.0f}", figures["wall_verdict"], figures["rss_verdict"]]],
                            ["wall s (target <= 15)", "peak RSS MB (target < 1024)", "time", "memory"]))
        harness.write("bench_compare", args, figures, {"runs": runs})
    finally:
        workspace.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
