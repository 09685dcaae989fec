"""Shared machinery of the benchmarks: child processes, alternation, medians, the table and JSON.

Every measurement runs in a fresh child process (benchmarks/child.py), so each one's peak
resident memory is its own (os.wait4 returns the rusage of exactly that child) and no
TensorFlow state carries over. Baseline and candidate alternate (B, C, B, C, ...), so a
slow spell of the shared machine hits both, and the figures are medians over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LOAD_AT_START = os.getloadavg()  # 2 shared cores: every figure goes with the machine's load


def parser(description: str, repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeats", type=int, default=repeats, help=f"runs of each side, alternating (default {repeats})")
    p.add_argument("--data-dir", default=os.environ.get("LE5_DATA_DIR"), help="default: $LE5_DATA_DIR")
    p.add_argument("--out", default=None, help="JSON file for the figures (default: benchmarks/results/<name>.json)")
    return p


BACKENDS = ("tensorflow", "jax", "torch")


def backend_option(p: argparse.ArgumentParser, default: str = "tensorflow,jax") -> None:
    p.add_argument("--backend", "--backends", dest="backends", default=default,
                   help=f"Keras backends to measure, comma-separated, from {', '.join(BACKENDS)} (default {default})")


def backends(args) -> list[str]:
    chosen = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BACKENDS]
    if unknown or not chosen:
        sys.exit(f"--backend {args.backends}: choose from {', '.join(BACKENDS)}")
    return chosen


def per_round(candidate: list[float], baseline: list[float]) -> list[float]:
    """candidate / baseline for each round (the two ran in the same round, close in time)."""
    return [c / b for c, b in zip(candidate, baseline)]


def data_dir(args) -> Path:
    if not args.data_dir:
        sys.exit("no data directory: pass --data-dir or export LE5_DATA_DIR=/path/with/mnist.npz+imdb.npz "
                 "(python -m benchmarks.synthetic writes IMDB/MNIST-shaped files for machines without them)")
    return Path(args.data_dir).resolve()


class Workspace:
    """A temporary MLflow store and Hydra output folder shared by one invocation's children."""

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="le5-bench-")
        self.path = Path(self._tmp.name)
        self.store = f"sqlite:///{self.path / 'mlflow.db'}"
        self.count = 0

    def project_overrides(self, *overrides: str) -> list[str]:
        self.count += 1
        return [
            f"tracking.tracking_uri={self.store}",
            "tracking.experiment_name=bench",
            f"hydra.run.dir={self.path / 'outputs' / str(self.count)}",
            "hydra.sweep.dir=" + str(self.path / "multirun" / str(self.count)),
            *overrides,
        ]

    def close(self):
        self._tmp.cleanup()


def spawn(args: list[str], env: dict | None = None, timeout: int = 1800) -> dict:
    """Run `python -m benchmarks.child ARGS`; return its JSON report plus wall time and peak RSS."""
    return spawn_command([sys.executable, "-m", "benchmarks.child", *args], env, timeout)


def spawn_command(command: list[str], env: dict | None = None, timeout: int = 1800) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as report:
        report_path = Path(report.name)
    log = tempfile.NamedTemporaryFile(suffix=".log", delete=False, mode="w+")
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "BENCH_REPORT": str(report_path), **(env or {})}
    start = time.time()
    proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    wall = time.time() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.seek(0)
    output = log.read()
    log.close()
    os.unlink(log.name)
    try:
        result = json.loads(report_path.read_text() or "{}")
    finally:
        report_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}:\n{output[-4000:]}")
    result.update(
        wall_s=wall,
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports kilobytes
        started_at=start,
    )
    if "first_step_at" in result:
        result["start_to_first_step_s"] = result["first_step_at"] - start
    if "imported_at" in result:
        result["start_to_import_s"] = result["imported_at"] - start
    return result


def alternate(sides: dict[str, callable], repeats: int) -> dict[str, list[dict]]:
    """Call each side once per round for `repeats` rounds, the order reversed every other round
    (A B, B A, A B, ...) so that neither side always runs first; print progress."""
    results = {name: [] for name in sides}
    for r in range(repeats):
        for name, fn in (reversed(sides.items()) if r % 2 else sides.items()):
            t = time.time()
            results[name].append(fn())
            print(f"  round {r + 1}/{repeats}: {name} done in {time.time() - t:.1f}s", flush=True)
    return results


def steady_epoch(result: dict) -> float:
    """Median epoch time after the first (which also traces and compiles the step function)."""
    times = result["epoch_times"]
    return statistics.median(times[1:] if len(times) > 1 else times)


def median(values) -> float:
    return statistics.median(list(values))


def spread(values) -> str:
    values = list(values)
    return f"{min(values):.3g}-{max(values):.3g}" if len(values) > 1 else f"{values[0]:.3g}"


def verdict(value: float, target: float) -> str:
    return "MET" if value <= target else "NOT MET"


def machine() -> dict:
    import numpy as np

    info = {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return info


def table(rows: list[list], header: list[str]) -> str:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write(name: str, args, figures: dict, raw: dict) -> Path:
    """The figures, the raw per-run reports and the machine (with its load: 2 shared cores are noisy) as JSON."""
    path = Path(args.out) if args.out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "repeats": args.repeats, "machine": machine(), "figures": figures, "raw": raw,
               "load_avg_at_start": LOAD_AT_START, "load_avg_at_end": os.getloadavg()}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"\nload average at start {LOAD_AT_START[0]:.2f} {LOAD_AT_START[1]:.2f} {LOAD_AT_START[2]:.2f}, "
          f"at end {' '.join(f'{x:.2f}' for x in payload['load_avg_at_end'])}")
    print(f"figures written to {path}")
    return path
