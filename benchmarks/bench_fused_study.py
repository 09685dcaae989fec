"""An Optuna study trained fused (hydra/launcher=fused, every batch one program) against the same study on the basic
launcher (one trial after another, trainer.loop=compiled), side by side in one invocation.

    LE5_DATA_DIR=/data/le5 python -m benchmarks.bench_fused_study [--repeats 1] [--trials 16] [--epochs 4]

The study: mnist_dense on real MNIST, backend=jax, the learning rate log-uniform in [1e-4, 1e-1], TPE and successive
halving (min_resource 1, reduction_factor 3), monitor val_accuracy, the config's seed (both sides ask the same
trials: TPE's first 10 are random, and the rest follow the results told). Fused: hydra.sweeper.n_jobs=--batch trials
asked at once and trained together; the basic launcher: n_jobs 1. Figures per side: wall time, trials pruned,
epochs trained (the trials' reports), best val_accuracy; the ratio fused/basic of the wall times.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from . import harness as h


def _study(ws: h.Workspace, data_dir: Path, args, fused: bool) -> dict:
    import optuna
    from optuna.trial import TrialState

    from src.sweeps import search

    side = (["hydra/launcher=fused", f"hydra.sweeper.n_jobs={args.batch}"] if fused
            else ["trainer.loop=compiled", "hydra.sweeper.n_jobs=1"])
    overrides = ws.project_overrides(
        "backend=jax", "hardware=cpu", f"data_dir={data_dir}", f"trainer.epochs={args.epochs}", "trainer.verbose=0",
        "trainer.monitor=val_accuracy", "tracking.log_model=false", "tracking.system_metrics=false",
        "hydra/sweeper=optuna", f"hydra.sweeper.n_trials={args.trials}", "hydra.sweeper.sampler=tpe",
        "hydra.sweeper.pruner=successive_halving", "hydra.sweeper.min_resource=1", "hydra.sweeper.reduction_factor=3",
        "optimizer.learning_rate=tag(log,interval(1e-4,1e-1))", *side)
    sweep_dir = Path(next(o for o in overrides if o.startswith("hydra.sweep.dir=")).partition("=")[2])
    command = [sys.executable, "-m", "src.train", "-m", *overrides]
    start = time.time()
    done = subprocess.run(command, cwd=h.ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
                          text=True, timeout=3600)
    wall = time.time() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=search.STUDY_NAME, storage=search.storage(sweep_dir))
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return {"wall_s": wall, "trials": len(trials), "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "epochs_trained": sum(len(t.intermediate_values) for t in trials),
            "best_val_accuracy": study.best_value, "best_learning_rate": study.best_params["optimizer.learning_rate"]}


def main() -> None:
    p = h.parser(__doc__.splitlines()[0], repeats=1)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=16, help="the fused study's hydra.sweeper.n_jobs (default 16)")
    args = p.parse_args()
    data_dir = h.data_dir(args)
    print(f"{args.trials} trials x {args.epochs} epochs of mnist_dense (TPE, successive halving); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    def side(fused: bool):
        def run():
            ws = h.Workspace()
            try:
                return _study(ws, data_dir, args, fused)
            finally:
                ws.close()
        return run

    raw = h.alternate({"basic": side(False), "fused": side(True)}, args.repeats)
    ratios = h.per_round([r["wall_s"] for r in raw["fused"]], [r["wall_s"] for r in raw["basic"]])
    figures = {name: {key: h.median([r[key] for r in runs]) for key in runs[0]} for name, runs in raw.items()}
    figures["wall_ratio_fused_basic"] = h.median(ratios)
    rows = [[name, f"{f['wall_s']:.1f}", f"{f['pruned']:.0f}/{f['trials']:.0f}", f"{f['epochs_trained']:.0f}",
             f"{f['best_val_accuracy']:.4f}"] for name, f in ((n, figures[n]) for n in ("basic", "fused"))]
    print(h.table(rows, ["", "wall s", "pruned", "epochs trained", "best val_accuracy"]))
    print(f"fused / basic wall time: {', '.join(f'{x:.2f}' for x in ratios)} (goal <= 0.5); load average at end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    h.write("bench_fused_study", args, figures, raw)


if __name__ == "__main__":
    main()
