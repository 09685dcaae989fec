"""Benchmark 3: MLflow tracking overhead: the same `src.train` run with the MLflow epoch callback on vs off.

    LE5_DATA_DIR=/work/shared/data python -m benchmarks.bench_tracking [--repeats 3] [--epochs 5] [--model imdb_dense]

"Off" drops the MLflowMetrics callback (the only tracking work inside the epoch loop); the run
itself is still created, so per-run costs are measured separately and directly:
  - the callback's own time per epoch (timed inside the process: precise, not a noisy difference),
  - the fixed cost per run: store check/experiment lookup, params, artifacts (model file, plot, config).
Default model: IMDB, whose short epochs (about 0.5 s here) make any per-epoch cost look largest.
Target: per-epoch overhead <= 2% of epoch time.
"""

from __future__ import annotations

from . import harness as h

TARGET = 0.02


def main() -> None:
    p = h.parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--model", default="imdb_dense")
    args = p.parse_args()
    data = h.data_dir(args)
    ws = h.Workspace()
    env = {"LE5_DATA_DIR": str(data)}
    common = (f"model={args.model}", f"trainer.epochs={args.epochs}", "hardware=cpu")
    try:
        h.spawn(["project", *ws.project_overrides("trainer.epochs=1", "hardware=cpu")], env)  # creates the store
        sides = {
            "tracking off": lambda: h.spawn(["project", "--no-mlflow-callback", *ws.project_overrides(*common)], env),
            "tracking on": lambda: h.spawn(["project", *ws.project_overrides(*common)], env),
        }
        raw = h.alternate(sides, args.repeats)
    finally:
        ws.close()
    off, on = ([h.steady_epoch(r) for r in raw[k]] for k in sides)
    diffs = [(b - a) / a for a, b in zip(off, on)]
    callback = [t for r in raw["tracking on"] for t in r["mlflow_callback_s"][1:]]
    callback_end = [sum(r["mlflow_callback_end_s"]) for r in raw["tracking on"]]
    direct = h.median(callback) / h.median(on)
    fixed = {k: h.median(sum(r.get(f"tracking_{k}_s", [0])) for r in raw["tracking on"])
             for k in ("connect", "params", "artifacts")}
    logged_ok = all(r["logged_epochs"] == args.epochs for r in raw["tracking on"])
    rows = [[k, f"{h.median(t):.3f}", h.spread(t)] for k, t in zip(sides, (off, on))]
    print(h.table(rows, ["side", "epoch s (median)", "range"]))
    print(f"\nMLflow callback time per epoch (timed inside): {h.median(callback) * 1000:.2f} ms "
          f"= {direct:.2%} of the epoch  target <= {TARGET:.0%}: {h.verdict(direct, TARGET)}")
    print(f"on vs off epoch time, per-round median: {h.median(diffs):+.2%} (rounds: "
          f"{', '.join(f'{d:+.1%}' for d in diffs)}; includes the background write's CPU time and the machine's noise)")
    print(f"end of training, waiting for queued metrics: {h.median(callback_end) * 1000:.1f} ms per run; "
          f"every epoch logged: {logged_ok}")
    print("fixed cost per run: " + ", ".join(f"{k} {v:.2f} s" for k, v in fixed.items()))
    h.write("bench_tracking", args, {
        "callback_ms_per_epoch": h.median(callback) * 1000, "epoch_s_on": h.median(on), "epoch_s_off": h.median(off),
        "ratio_callback_over_epoch": direct, "ratio_on_minus_off_over_off": h.median(diffs), "per_round": diffs,
        "wait_at_train_end_ms": h.median(callback_end) * 1000, "every_epoch_logged": logged_ok,
        "fixed_cost_s": fixed, "target": TARGET, "met": direct <= TARGET,
    }, raw)


if __name__ == "__main__":
    main()
