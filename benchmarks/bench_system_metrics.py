"""MLflow system metrics overhead: the same small real training with tracking.system_metrics on vs off, alternating.

    LE5_DATA_DIR=/work/shared/data python -m benchmarks.bench_system_metrics [--repeats 4] [--interval 1]

One process trains `--model` for `--epochs` epochs per run (TensorFlow imported once), alternating off/on
runs into a temporary SQLite store. Two figures:
  - direct: the sampler thread's own CPU time (MLflow's collect_metrics + publish_metrics, timed inside
    with time.thread_time) per second of run, i.e. the share of one core it takes; precise, not a noisy
    difference;
  - on vs off: median epoch time per round (includes the machine's noise: 2 shared cores here).
The default interval here is 1 s, ten times the sampling of the project's default (10 s): a bound.
Target: overhead <= 1% of epoch time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.01


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=4, help="runs of each side, alternating")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--model", default="imdb_dense")
    p.add_argument("--interval", type=float, default=1.0, help="tracking.system_metrics_interval of the 'on' runs")
    p.add_argument("--data-dir", default=os.environ.get("LE5_DATA_DIR"))
    args = p.parse_args()
    if not args.data_dir:
        sys.exit("no data directory: pass --data-dir or export LE5_DATA_DIR=/path/with/mnist.npz+imdb.npz")

    import keras
    from hydra import compose, initialize_config_dir
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    sys.path.insert(0, str(ROOT))
    from src import config, train

    sampler = {"s": 0.0, "cpu_s": 0.0, "samples": 0}

    def timed(name):
        original = getattr(SystemMetricsMonitor, name)

        def wrapper(self, *a, **k):
            t, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(self, *a, **k)
            finally:
                sampler["s"] += time.perf_counter() - t
                sampler["cpu_s"] += time.thread_time() - cpu  # CPU it takes from training; the rest waits on I/O
                sampler["samples"] += name == "collect_metrics"

        setattr(SystemMetricsMonitor, name, wrapper)

    timed("collect_metrics")
    timed("publish_metrics")

    epochs: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epochs.append(time.perf_counter() - self.t)

    original_callbacks = train._callbacks
    train._callbacks = lambda *a: [Timer(), *original_callbacks(*a)]  # first: the epoch covers the others
    config.register()

    results = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="le5-bench-") as tmp:
        common = [f"model={args.model}", f"trainer.epochs={args.epochs}", "hardware=cpu", f"data_dir={args.data_dir}",
                  f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db", "tracking.experiment_name=bench",
                  "tracking.log_model=false", f"tracking.system_metrics_interval={args.interval}"]
        for i in range(args.repeats):
            for side in ("off", "on"):
                with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                    cfg = compose("config", overrides=[*common, f"tracking.system_metrics={side == 'on'}"])
                epochs.clear()
                sampler.update(s=0.0, cpu_s=0.0, samples=0)
                start = time.perf_counter()
                train.train(cfg, Path(tmp) / f"{side}{i}")
                wall = time.perf_counter() - start
                steady = statistics.median(epochs[1:])  # the first epoch also traces the step function
                results[side].append({"epoch_s": steady, "wall_s": wall, "sampler_s": sampler["s"],
                                      "sampler_cpu_s": sampler["cpu_s"], "samples": sampler["samples"]})
                print(f"round {i + 1} {side:3}: epoch {steady:.3f} s, run {wall:.1f} s, {sampler['samples']} samples "
                      f"taking {sampler['s'] * 1000:.0f} ms ({sampler['cpu_s'] * 1000:.0f} ms CPU)", flush=True)

    on, off = results["on"], results["off"]
    rounds = [b["epoch_s"] / a["epoch_s"] for a, b in zip(off, on)]
    direct = statistics.median(r["sampler_cpu_s"] / r["wall_s"] for r in on)
    waiting = statistics.median(r["sampler_s"] / r["wall_s"] for r in on)
    samples = max(1, sum(r["samples"] for r in on))
    per_sample = sum(r["sampler_cpu_s"] for r in on) / samples
    per_sample_wall = sum(r["sampler_s"] for r in on) / samples
    print(f"\n{args.model}, {args.epochs} epochs, interval {args.interval} s, {args.repeats} rounds")
    print(f"epoch time off {statistics.median(r['epoch_s'] for r in off):.3f} s, "
          f"on {statistics.median(r['epoch_s'] for r in on):.3f} s (medians)")
    print(f"on/off epoch time ratio, per round: {', '.join(f'{r:.3f}' for r in rounds)}; "
          f"median {statistics.median(rounds):.3f}")
    print(f"sampler thread: {per_sample * 1000:.1f} ms CPU ({per_sample_wall * 1000:.1f} ms wall, mostly the store's "
          f"write) per sample; its CPU = {direct:.3%} of the run's wall time (wall {waiting:.3%}) "
          f"(target <= {TARGET:.0%}: {'met' if direct <= TARGET else 'NOT met'}); at the default 10 s interval "
          f"{direct * args.interval / 10:.3%}")


if __name__ == "__main__":
    main()
