"""Benchmark: the compute pruning saves on +experiment=mnist_optuna, and its best accuracy against the grid preset.

    LE5_DATA_DIR=/work/shared/data python -m benchmarks.bench_pruning [--n-trials 6] [--epochs 5]

Runs, through the real CLI on the real MNIST file (hardware=cpu, basic launcher), the Optuna preset
(learning rate log-uniform, units, dropout; ASHA) with --n-trials trials, then the grid preset
+experiment=mnist_learning_rate (6 learning rates) with the same epochs. Figures, from each sweep's MLflow
children: epochs run against trials x epochs (what pruning saved), the best validation accuracy of any epoch and
that run's test accuracy, and wall time.
"""

from __future__ import annotations

import sys

from . import harness as h


def sweep_figures(store: str, experiment: str, epochs: int) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    [exp] = [e for e in client.search_experiments() if e.name == experiment]
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    ran, best = 0, None
    for run in children:
        history = [m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        ran += len(history)
        if history and (best is None or max(history) > best[0]):
            best = (max(history), run.data.metrics.get("test_accuracy"), run.data.tags.get("sweep.overrides"))
    return {"runs": len(children), "pruned": sum(r.data.tags.get("pruned") == "true" for r in children),
            "epochs_run": ran, "epochs_without_pruning": len(children) * epochs,
            "best_val_accuracy": best[0] if best else None, "its_test_accuracy": best[1] if best else None,
            "best_overrides": best[2] if best else None}


def main() -> None:
    p = h.parser(__doc__.splitlines()[0], repeats=1)
    p.add_argument("--n-trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=5, help="trainer.epochs of both presets (theirs: 5)")
    args = p.parse_args()
    data = h.data_dir(args)
    ws = h.Workspace()
    env = {"LE5_DATA_DIR": str(data)}
    cli = [sys.executable, "-m", "src.train", "-m"]
    common = ("hardware=cpu", "tracking.log_model=false", "trainer.verbose=0", f"trainer.epochs={args.epochs}")
    sides = {
        "optuna": (f"+experiment=mnist_optuna hydra.sweeper.n_trials={args.n_trials}", "optuna"),
        "grid": ("+experiment=mnist_learning_rate", "grid"),
    }
    figures, raw = {}, {}
    try:
        for name, (preset, experiment) in sides.items():
            overrides = [o for o in ws.project_overrides(*common) if not o.startswith("tracking.experiment_name")]
            result = h.spawn_command([*cli, *preset.split(), *overrides, f"tracking.experiment_name={experiment}"],
                                     env, timeout=1800)
            figures[name] = {**sweep_figures(ws.store, experiment, args.epochs), "wall_s": result["wall_s"]}
            raw[name] = [result]
            print(f"{name}: {figures[name]}", flush=True)
    finally:
        ws.close()
    rows = [[name, f["runs"], f["pruned"], f"{f['epochs_run']} of {f['epochs_without_pruning']}",
             f"{1 - f['epochs_run'] / f['epochs_without_pruning']:.0%}", f"{f['best_val_accuracy']:.4f}",
             f"{f['its_test_accuracy']:.4f}", f"{f['wall_s']:.0f}"] for name, f in figures.items()]
    print(h.table(rows, ["sweep", "runs", "pruned", "epochs run", "saved", "best val_accuracy", "its test_accuracy",
                         "wall s"]))
    o, g = figures["optuna"], figures["grid"]
    print(f"\nratio optuna / grid: epochs run {o['epochs_run'] / g['epochs_run']:.2f}, "
          f"wall {o['wall_s'] / g['wall_s']:.2f}; best val_accuracy {o['best_val_accuracy'] - g['best_val_accuracy']:+.4f}")
    h.write("bench_pruning", args, figures, raw)


if __name__ == "__main__":
    main()
