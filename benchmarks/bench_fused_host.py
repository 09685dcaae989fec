"""The per-epoch host work of a fused group (issue 18, item 6): a group of `--members` points of a 1-unit dense net on
tiny synthetic MNIST, so the device's time per epoch is near zero and what remains is the host's: each member's
metrics, NaN check and early stopping, and the hand-over of the group's state to the writer thread (checkpoints and
MLflow requests are written there, beside training). The launcher logs the median per epoch; this prints it with
the group's epoch time and the load average. Target: <= 50 ms per epoch for 64 members.

    python -m benchmarks.bench_fused_host [--members 64] [--epochs 30]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import synthetic
from benchmarks.bench_fused import EPOCH_LINE

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 50.0
HOST_LINE = re.compile(r"host work per epoch .* median ([\d.]+) ms for (\d+) member\(s\); the writer thread wrote "
                       r"(\d+) time\(s\) in (\d+) epoch\(s\) .* median (\d+) ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    medians = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            synthetic.write_mnist(tmp / "mnist.npz", scale=0.01)
            command = [sys.executable, "-m", "src.train", "-m", "hydra/launcher=fused", "backend=jax", "hardware=cpu",
                       f"data_dir={tmp}", "dataset.download=false", "dataset.sha256=null", "dataset.validation_size=100",
                       "model.units=[1]", "trainer.batch_size=128", f"trainer.epochs={args.epochs}",
                       "tracking.log_model=false", f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db",
                       f"hydra.sweep.dir={tmp}/sweep", f"seed=range({args.members})"]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            out = done.stdout + done.stderr
            if done.returncode != 0:
                sys.exit(f"the fused sweep failed:\n{out[-3000:]}")
        found = HOST_LINE.search(out)
        if found is None:
            sys.exit(f"no host-work line in the sweep's log:\n{out[-3000:]}")
        host, writes, epochs_run, write_ms = float(found[1]), int(found[3]), int(found[4]), int(found[5])
        epochs = [float(m.group(3)) * 1000 for m in EPOCH_LINE.finditer(out) if int(m.group(1)) > 1]
        medians.append(host)
        print(f"round {r + 1}: host work per epoch, median {host:.1f} ms for {args.members} members; the group's "
              f"epoch (device + one transfer) median {statistics.median(epochs):.1f} ms; the writer thread (beside "
              f"training) wrote {writes} times in {epochs_run} epochs, median {write_ms} ms per write", flush=True)
    worst = max(medians)
    print(f"host work per epoch for {args.members} members: {', '.join(f'{x:.1f}' for x in medians)} ms "
          f"(target <= {TARGET_MS:.0f} ms: {'met' if worst <= TARGET_MS else 'not met'}); "
          f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
