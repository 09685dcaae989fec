"""A whole sweep, fused vs one point after another, side by side in one invocation (alternating order over --rounds).

The points: 4 learning rates x (points / 4) seeds of mnist_dense, `--epochs` each, backend=jax; once with
hydra/launcher=fused and once with the basic launcher and `trainer.loop=<--baseline>`. Prints each sweep's wall
time, their ratio, the fused group's steady epoch (median of its epochs 2..N, all members together) and the load
average.

    LE5_DATA_DIR=/path/to/data python -m benchmarks.bench_fused                      # CPU: 16 points x 2 epochs
    python -m benchmarks.bench_fused --hardware gpu --points 64 --epochs 5 --baseline fit   # the GPU case
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEARNING_RATES = "3e-4,1e-3,3e-3,1e-2"
EPOCH_LINE = re.compile(r"Group \d+ epoch (\d+)/\d+: (\d+) member\(s\) trained in ([\d.]+) s")


def sweep(launcher: list[str], folder: Path, args) -> tuple[float, list[float]]:
    """Wall time of the sweep, and the fused epochs' times (empty for the baseline)."""
    seeds = ",".join(str(s) for s in range(1, args.points // 4 + 1))
    command = [sys.executable, "-m", "src.train", "-m", "backend=jax", f"hardware={args.hardware}",
               "trainer.verbose=0", f"trainer.epochs={args.epochs}", f"tracking.tracking_uri=sqlite:///{folder}/mlflow.db",
               f"hydra.sweep.dir={folder}/sweep", f"optimizer.learning_rate={LEARNING_RATES}", f"seed={seeds}", *args.overrides, *launcher]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(launcher)} failed:\n{done.stderr[-3000:]}")
    epochs = [float(m.group(3)) for m in EPOCH_LINE.finditer(done.stdout + done.stderr) if int(m.group(1)) > 1]
    return wall, epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--points", type=int, default=16, help="a multiple of 4 (4 learning rates x points/4 seeds)")
    p.add_argument("--hardware", default="cpu")
    p.add_argument("--baseline", choices=["compiled", "fit"], default="compiled", help="the basic launcher's trainer.loop")
    p.add_argument("--overrides", nargs="*", default=[], help="more overrides for both sweeps (dataset.sha256=null)")
    args = p.parse_args()
    if not os.environ.get("LE5_DATA_DIR"):
        sys.exit("export LE5_DATA_DIR=/path/with/mnist.npz")
    base = f"basic+{args.baseline}"
    sides = {"fused": ["hydra/launcher=fused"], base: [f"trainer.loop={args.baseline}"]}
    times: dict[str, list[float]] = {name: [] for name in sides}
    steady: list[float] = []
    print(f"{args.points} points x {args.epochs} epochs of mnist_dense, hardware={args.hardware}; load average at "
          f"start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            with tempfile.TemporaryDirectory() as tmp:
                wall, epochs = sweep(sides[name], Path(tmp), args)
            times[name].append(wall)
            steady += epochs
            print(f"round {r + 1} {name:15s} {wall:7.1f} s", flush=True)
    ratios = [f / b for f, b in zip(times["fused"], times[base])]
    if steady:
        print(f"fused steady epoch (all {args.points} members): median {statistics.median(steady):.3f} s")
    print(f"fused / {base} = {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
