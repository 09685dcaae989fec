"""Benchmark 2: IMDB 16-16-1 net, batch 512: peak memory and epoch time of `src.train` vs the lab's way and dense float32.

    LE5_DATA_DIR=/work/shared/data python -m benchmarks.bench_imdb [--repeats 3] [--epochs 4] [--no-alternatives]

Each side runs in its own process; peak memory is that process's maximum resident set size.
  (a) lab:     float64 multi-hot matrices for train and test built with the lab's Python loop, then fit
  (b) dense32: one dense float32 multi-hot matrix per split (vectorised), then fit on numpy arrays
  src.train:   the project (sparse multi-hot batches built in tf.data from CSR rows), MLflow tracking on
and, for the choice of representation, two alternatives the project could have used (same tf.data index pipeline):
  uint8:       dense uint8 multi-hot matrices held in memory, cast to float32 per batch
  ragged->dense: CSR rows scattered into a dense float32 multi-hot batch per batch
Targets: peak memory of src.train <= 1/5 of (a); epoch time of src.train <= 1.0x (b).
"""

from __future__ import annotations

from . import harness as h

MEMORY_TARGET = 1 / 5
TIME_TARGET = 1.0


def main() -> None:
    p = h.parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lab-repeats", type=int, default=1,
                   help="runs of the lab's way (8-9 GB, slow; its memory barely varies) (default 1)")
    p.add_argument("--no-alternatives", action="store_true", help="skip the uint8 and ragged->dense sides")
    args = p.parse_args()
    data = h.data_dir(args)
    ws = h.Workspace()
    env = {"LE5_DATA_DIR": str(data)}
    e = str(args.epochs)
    try:
        h.spawn(["project", *ws.project_overrides("trainer.epochs=1", "hardware=cpu")], env)  # creates the store
        sides = {
            "dense32 (b)": lambda: h.spawn(["dense_imdb", e, str(data)], env),
            "src.train": lambda: h.spawn(
                ["project", *ws.project_overrides("model=imdb_dense", f"trainer.epochs={e}", "hardware=cpu")], env),
        }
        if not args.no_alternatives:
            sides["uint8 per batch"] = lambda: h.spawn(["uint8_imdb", e, str(data)], env)
            sides["ragged->dense per batch"] = lambda: h.spawn(["ragged_dense_imdb", e, str(data)], env)
        raw = h.alternate(sides, args.repeats)
        raw.update(h.alternate({"lab float64 (a)": lambda: h.spawn(["lab_imdb", e, str(data)], env)},
                               args.lab_repeats))
    finally:
        ws.close()
    epoch = {k: [h.steady_epoch(r) for r in v] for k, v in raw.items()}
    rss = {k: [r["peak_rss_mb"] for r in v] for k, v in raw.items()}
    # time ratios per round (the two sides ran back to back), memory against the lab's median
    time_ratios = [c / b for b, c in zip(epoch["dense32 (b)"], epoch["src.train"])]
    time_ratio = h.median(time_ratios)
    mem_ratio = h.median(rss["src.train"]) / h.median(rss["lab float64 (a)"])
    order = ["lab float64 (a)", "dense32 (b)", "src.train", "uint8 per batch", "ragged->dense per batch"]
    rows = [[k, f"{h.median(rss[k]) / 1024:.2f}", f"{h.median(epoch[k]):.3f}", h.spread(epoch[k]),
             f"{h.median(epoch[k]) / h.median(epoch['dense32 (b)']):.2f}",
             f"{h.median(r['test']['test_accuracy'] for r in raw[k]):.4f}"] for k in order if k in raw]
    print(h.table(rows, ["side", "peak RSS GB", "epoch s (median)", "range", "x dense32", "test acc"]))
    print(f"\npeak memory src.train / lab: {mem_ratio:.3f}  target <= {MEMORY_TARGET:.2f}: "
          f"{h.verdict(mem_ratio, MEMORY_TARGET)}")
    print(f"epoch time src.train / dense32, per-round median: {time_ratio:.3f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in time_ratios)})  target <= {TIME_TARGET}: "
          f"{h.verdict(time_ratio, TIME_TARGET)}")
    h.write("bench_imdb", args, {
        "peak_rss_gb": {k: h.median(v) / 1024 for k, v in rss.items()},
        "epoch_s": {k: h.median(v) for k, v in epoch.items()},
        "ratio_rss_project_over_lab": mem_ratio, "memory_target": MEMORY_TARGET, "memory_met": mem_ratio <= MEMORY_TARGET,
        "ratio_epoch_project_over_dense32": time_ratio, "ratio_epoch_per_round": time_ratios,
        "time_target": TIME_TARGET, "time_met": time_ratio <= TIME_TARGET,
    }, raw)


if __name__ == "__main__":
    main()
