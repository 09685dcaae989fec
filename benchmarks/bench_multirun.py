"""Benchmark 5: a 4-point local multirun in one process vs 4 separate `python -m src.train` invocations.

    LE5_DATA_DIR=/work/shared/data python -m benchmarks.bench_multirun [--repeats 2] [--epochs 1]

Both sweep optimizer.learning_rate over 4 values of the MNIST dense net through the real CLI;
figure: total wall time of each, and their ratio. One process pays the start-up of Python,
TensorFlow, Hydra and MLflow once instead of 4 times; each job still loads its data and builds
its model (jobs must not share state).
"""

from __future__ import annotations

import sys

from . import harness as h

RATES = ["1e-3", "5e-4", "2e-3", "1e-4"]


def main() -> None:
    p = h.parser(__doc__.splitlines()[0], repeats=2)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    data = h.data_dir(args)
    ws = h.Workspace()
    env = {"LE5_DATA_DIR": str(data)}
    cli = [sys.executable, "-m", "src.train"]
    common = (f"trainer.epochs={args.epochs}", "hardware=cpu", "tracking.log_model=false")

    def separate():
        total = 0.0
        for rate in RATES:
            total += h.spawn_command([*cli, *ws.project_overrides(*common, f"optimizer.learning_rate={rate}")],
                                     env)["wall_s"]
        return {"wall_s": total}

    def multirun():
        return h.spawn_command([*cli, "-m", *ws.project_overrides(*common, "optimizer.learning_rate=" + ",".join(RATES))],
                               env)

    try:
        h.spawn(["project", *ws.project_overrides("trainer.epochs=1", "hardware=cpu")], env)  # creates the store
        raw = h.alternate({"4 separate invocations": separate, "one multirun (-m)": multirun}, args.repeats)
    finally:
        ws.close()
    sep, multi = ([r["wall_s"] for r in raw[k]] for k in raw)
    ratios = [m / s for s, m in zip(sep, multi)]
    rows = [[k, f"{h.median(t):.1f}", h.spread(t)] for k, t in zip(raw, (sep, multi))]
    print(h.table(rows, ["4 runs x " + f"{args.epochs} epoch(s)", "wall s (median)", "range"]))
    print(f"\nratio multirun / separate, per-round median: {h.median(ratios):.2f}")
    h.write("bench_multirun", args, {"separate_s": h.median(sep), "multirun_s": h.median(multi),
                                     "ratio_multirun_over_separate": h.median(ratios)}, raw)


if __name__ == "__main__":
    main()
