"""Config refusals: wall time of `python -m src.train <bad override>` until it exits, next to a bare Python start
and a bare `import tensorflow`, and whether any backend start-up line was printed.

    python -m benchmarks.bench_refusal [--repeats 5]

Target (issue "house"): every refusal (composition or config.validate) exits within 2 s of wall time and prints
no TensorFlow/JAX start-up line. Sides alternate within each round, so load affects them alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 2.0
CHATTER = ("tensorflow/", "cuInit", "oneDNN", "E0000", "I0000", "absl", "cudart", "xla_bridge")
SIDES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import tensorflow'": [sys.executable, "-c", "import tensorflow"],
    "src.train trainer.epocs=3 (typo: composition)": [sys.executable, "-m", "src.train", "trainer.epocs=3"],
    "src.train model=imdb_dense dataset=mnist (validate)": [
        sys.executable, "-m", "src.train", "model=imdb_dense", "dataset=mnist"],
    "src.train trainer.epochs=0 backend=jax (validate)": [
        sys.executable, "-m", "src.train", "trainer.epochs=0", "backend=jax"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in SIDES}
    chatter: dict[str, set[str]] = {name: set() for name in SIDES}
    for round_ in range(args.repeats):
        order = list(SIDES) if round_ % 2 == 0 else list(reversed(SIDES))
        for name in order:
            start = time.perf_counter()
            done = subprocess.run(SIDES[name], cwd=ROOT, capture_output=True, text=True)
            times[name].append(time.perf_counter() - start)
            chatter[name] |= {c for c in CHATTER if c in done.stdout + done.stderr}
            if name.startswith("src.train") and done.returncode not in (1, 2):
                raise SystemExit(f"{name}: exit {done.returncode}, expected a refusal:\n{done.stderr[-2000:]}")
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    width = max(map(len, SIDES))
    print(f"{'command'.ljust(width)}  median s  max s   start-up lines printed")
    for name in SIDES:
        printed = ", ".join(sorted(chatter[name])) or "none"
        print(f"{name.ljust(width)}  {statistics.median(times[name]):8.2f}  {max(times[name]):5.2f}   {printed}")
    refusals = [t for name, ts in times.items() if name.startswith("src.train") for t in ts]
    clean = not any(chatter[name] for name in SIDES if name.startswith("src.train"))
    print(f"\nslowest refusal {max(refusals):.2f} s (target <= {TARGET_S} s): "
          f"{'met' if max(refusals) <= TARGET_S else 'NOT met'}; no start-up lines: {'met' if clean else 'NOT met'}; "
          f"{args.repeats} rounds, load average {load}")


if __name__ == "__main__":
    main()
