"""Benchmark 4: start-up: process start to the first training step of `src.train`, next to a bare `import tensorflow`.

    LE5_DATA_DIR=/work/shared/data python -m benchmarks.bench_startup [--repeats 5] [--model mnist_dense]

Both are measured from the parent's clock just before it starts the child process; the first
step is the first on_train_batch_begin of model.fit (after Hydra, the store check, data
loading, model build and the MLflow run's start).
"""

from __future__ import annotations

from . import harness as h


def main() -> None:
    p = h.parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--model", default="mnist_dense")
    args = p.parse_args()
    data = h.data_dir(args)
    ws = h.Workspace()
    env = {"LE5_DATA_DIR": str(data)}
    try:
        h.spawn(["project", *ws.project_overrides("trainer.epochs=1", "hardware=cpu")], env)  # creates the store
        sides = {
            "import tensorflow": lambda: h.spawn(["import_tf"], env),
            "src.train to first step": lambda: h.spawn(
                ["project", *ws.project_overrides(f"model={args.model}", "trainer.epochs=1", "hardware=cpu")], env),
        }
        raw = h.alternate(sides, args.repeats)
    finally:
        ws.close()
    tf_s = [r["start_to_import_s"] for r in raw["import tensorflow"]]
    first = [r["start_to_first_step_s"] for r in raw["src.train to first step"]]
    ratios = [b / a for a, b in zip(tf_s, first)]
    rows = [["import tensorflow", f"{h.median(tf_s):.2f}", h.spread(tf_s)],
            [f"src.train model={args.model}: first step", f"{h.median(first):.2f}", h.spread(first)]]
    print(h.table(rows, ["process start to ...", "s (median)", "range"]))
    print(f"\nratio first step / import tensorflow, per-round median: {h.median(ratios):.2f}; "
          f"the project's own start-up (Hydra, MLflow store, data, model): {h.median(first) - h.median(tf_s):.2f} s")
    h.write("bench_startup", args, {
        "import_tensorflow_s": h.median(tf_s), "first_step_s": h.median(first),
        "ratio_first_step_over_import": h.median(ratios), "project_overhead_s": h.median(first) - h.median(tf_s),
    }, raw)


if __name__ == "__main__":
    main()
