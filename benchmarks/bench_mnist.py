"""Benchmark 1: MNIST dense net, 5 epochs, batch 128: `src.train` (tracking on) vs the lab's plain Keras script.

    LE5_DATA_DIR=/work/shared/data python -m benchmarks.bench_mnist [--repeats 3] [--epochs 5]

Both train on the same 55,000 images and validate on the same 5,000 each epoch (the lab's script
is given the project's validation split, so both do equal work). Figure: median steady-state
epoch time (epochs 2..N; epoch 1 also traces the step function) of each, and their ratio.
Target: project / plain <= 1.05.
"""

from __future__ import annotations

from . import harness as h

TARGET = 1.05


def main() -> None:
    p = h.parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args()
    data = h.data_dir(args)
    ws = h.Workspace()
    env = {"LE5_DATA_DIR": str(data)}
    try:
        h.spawn(["project", *ws.project_overrides("trainer.epochs=1", "hardware=cpu")], env)  # creates the store
        sides = {
            "plain Keras (lab)": lambda: h.spawn(["lab_mnist", str(args.epochs), str(data)], env),
            "src.train": lambda: h.spawn(
                ["project", *ws.project_overrides("model=mnist_dense", f"trainer.epochs={args.epochs}",
                                                  "hardware=cpu")], env),
        }
        raw = h.alternate(sides, args.repeats)
    finally:
        ws.close()
    base, cand = ([h.steady_epoch(r) for r in raw[k]] for k in sides)
    ratios = [c / b for b, c in zip(base, cand)]
    ratio = h.median(ratios)
    rows = [[name, f"{h.median(t):.3f}", h.spread(t), f"{h.median(r['test']['test_accuracy'] for r in raw[name]):.4f}",
             f"{h.median(r['epoch_times'][0] for r in raw[name]):.2f}"]
            for name, t in zip(sides, (base, cand))]
    print(h.table(rows, ["side", "epoch s (median)", "range", "test acc", "epoch 1 s"]))
    print(f"\nratio src.train / plain Keras, per-round median: {ratio:.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)})"
          f"  target <= {TARGET}: {h.verdict(ratio, TARGET)}")
    h.write("bench_mnist", args, {
        "epoch_s_plain": h.median(base), "epoch_s_project": h.median(cand),
        "ratio_epoch_project_over_plain": ratio, "ratio_per_round": ratios,
        "target": TARGET, "met": ratio <= TARGET,
    }, raw)


if __name__ == "__main__":
    main()
