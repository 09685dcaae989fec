"""A lone trainer.loop=compiled run's per-epoch host work: its callbacks, with the checkpoint written by
`model.save_weights` on the training thread (before) or handed to resume.Writer's thread (after), one process.

    python -m benchmarks.bench_host_work [--repeats 3] [--epochs 12]

Keras on JAX, on the CPU; MNIST-shaped synthetic data (500 training images, batch 128: 4 steps per epoch). Each
round trains, from seed 0 and in alternating order, three runs per model through src/training/compiled.py's Epochs:
- before: the callbacks of src/train.py (StopOnSignal, TerminateOnNaN, the checkpoint, MLflowMetrics into a real
  SQLite store) as they were: the checkpoint by `model.save_weights` (.h5) and an fsync'd state.json in the epoch,
  a heartbeat tag written at every epoch's end;
- after: the same callbacks as they are: a host copy of the variables, written by resume.Writer's thread, and an
  epoch's heartbeat at most every liveness.EPOCH_BEAT_S;
- checkpoint before / checkpoint after: StopOnSignal, TerminateOnNaN and the checkpoint only (no MLflow);
- none: no callbacks (the loop alone).
Figures, medians over epochs 2..N (epoch 1 also compiles): the time spent inside the callbacks per epoch (the
training thread's host work; the device's time is not in it), and the whole epoch's wall time, which also holds
what the background threads (checkpoint writer, MLflow sender) take from the training thread (2 shared cores, one
GIL). Models: `tiny` (Dense 1, so the device
time is near zero and the whole epoch is host work) and the lab's `mnist_dense` (Dense 512: 0.4 M weights, whose
checkpoint was the 28 ms of docs/performance.md). Also: one checkpoint write alone (resume.commit), the work the
writer thread does per epoch beside training.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from . import harness as h
from .synthetic import write_mnist

MODELS = {"tiny": [1], "mnist_dense": [512]}  # model.units
# side: (the checkpoint as it was, with MLflowMetrics); None: no callbacks
SIDES = {"before": (True, True), "after": (False, True), "checkpoint before": (True, False),
         "checkpoint after": (False, False), "none": None}


def _setup():
    from omegaconf import OmegaConf

    from src.training import backend
    from src import config

    hw = OmegaConf.merge(OmegaConf.structured(config.HardwareConfig),
                         OmegaConf.load(h.ROOT / "conf" / "hardware" / "cpu.yaml"))
    backend.activate(config.Backend.jax, hw)
    import keras

    from src.training import hardware

    hardware.setup(hw, config.Backend.jax)
    return keras


def _configs(data_dir: Path, units: list[int]):
    from omegaconf import OmegaConf

    from src import config
    from src.data import datasets as data

    dcfg = OmegaConf.merge(OmegaConf.structured(config.DatasetConfig),
                           OmegaConf.load(h.ROOT / "conf" / "dataset" / "mnist.yaml"))
    dcfg.sha256, dcfg.validation_size = None, 100  # a synthetic file
    mcfg = OmegaConf.merge(OmegaConf.structured(config.ModelConfig),
                           OmegaConf.load(h.ROOT / "conf" / "model" / "mnist_dense.yaml")["model"])
    mcfg.units = units
    ocfg = OmegaConf.merge(OmegaConf.structured(config.OptimizerConfig),
                           OmegaConf.load(h.ROOT / "conf" / "optimizer" / "rmsprop.yaml"))
    return data.load(dcfg, data_dir), mcfg, ocfg


def _save_weights_backup():
    """resume.Backup's epoch end as it was before the writer: save_weights and state.json, on the training thread."""
    import math

    from src.tracking import names
    from src.training import resume
    from src.training.callbacks import numeric_logs

    class SaveWeightsBackup(resume.Backup):
        def on_epoch_end(self, epoch, logs=None):
            values = numeric_logs(logs)
            values[names.EPOCH_TIME] = time.perf_counter() - self._epoch_start
            if not math.isfinite(values.get("loss", 0.0)):
                return
            weights = f"epoch-{epoch + 1}.weights.h5"
            self.folder.mkdir(parents=True, exist_ok=True)
            self.model.save_weights(self.folder / weights)
            previous = self.state["weights"]
            self.state = {**self.state, "epochs": [*self.epochs, values], "weights": weights}
            tmp = self.folder / f".{resume.STATE}.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(self.state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / resume.STATE)
            if previous and previous != weights:
                (self.folder / previous).unlink(missing_ok=True)

    return SaveWeightsBackup


def _timed(keras, inner: list):
    """One callback that calls `inner` in order and times them: per epoch, the time inside them (on_epoch_begin,
    the epoch's batch end, on_epoch_end) and the epoch's wall time (from on_epoch_begin to on_epoch_end's end)."""

    class Timed(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.inside, self.wall = [], []
            self._inside = self._start = 0.0

        def set_model(self, model):
            super().set_model(model)
            for c in inner:
                c.set_model(model)

        def set_params(self, params):
            super().set_params(params)
            for c in inner:
                c.set_params(params)

        def _call(self, hook, *args):
            start = time.perf_counter()
            for c in inner:
                getattr(c, hook)(*args)
            self._inside += time.perf_counter() - start

        def on_train_begin(self, logs=None):
            self._call("on_train_begin", logs)

        def on_epoch_begin(self, epoch, logs=None):
            self._start, self._inside = time.perf_counter(), 0.0
            self._call("on_epoch_begin", epoch, logs)

        def on_train_batch_end(self, batch, logs=None):
            self._call("on_train_batch_end", batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            self._call("on_epoch_end", epoch, logs)
            self.inside.append(self._inside)
            self.wall.append(time.perf_counter() - self._start)

        def on_train_end(self, logs=None):
            self._call("on_train_end", logs)

    return Timed()


def _run(keras, side: str, ds, mcfg, ocfg, epochs: int, client, experiment_id: str, folder: Path,
         beat_s: float) -> dict:
    import jax

    from src.training import callbacks, compiled, models, resume
    from src.tracking import liveness

    old, mlflow = SIDES[side] or (False, False)
    liveness.EPOCH_BEAT_S = 0.0 if old else beat_s  # before: every epoch's end beat
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = models.build_model(mcfg, ds.spec)
    model.compile(optimizer=models.build_optimizer(ocfg), loss=ds.spec.loss, metrics=["accuracy"])
    inner = []
    if SIDES[side] is not None:
        run_id = client.create_run(experiment_id).info.run_id
        backup = (_save_weights_backup() if old else resume.Backup)(folder, "bench", resume=False)
        backup.record_run(run_id)
        inner = [callbacks.StopOnSignal(), keras.callbacks.TerminateOnNaN(), backup]
        if mlflow:
            inner.append(callbacks.MLflowMetrics(run_id, client, committed=None if old else backup.committed))
    timed = _timed(keras, inner)
    device = jax.devices("cpu")[0]
    loop = compiled.Epochs(model, ds, 128, 0, int(0.5 * compiled.free_device_bytes(device)), device, verbose=0)
    loop.fit(epochs, 0, [timed])
    if SIDES[side] is not None:
        client.set_terminated(run_id)
    return {"inside_ms": [t * 1e3 for t in timed.inside], "wall_ms": [t * 1e3 for t in timed.wall], "model": model}


def _write_alone(model, folder: Path, repeats: int = 15) -> float:
    """One checkpoint as the writer thread writes it (weights .npz fsynced, state.json committed), in ms."""
    from src.training import resume

    times, previous = [], None
    for i in range(repeats):
        start = time.perf_counter()
        weights = f"epoch-{i + 1}.weights.npz"
        resume.commit(folder, json.dumps({"epochs": [{"loss": 1.0}] * 10, "weights": weights}), weights,
                      resume.snapshot(model), previous)
        times.append((time.perf_counter() - start) * 1e3)
        previous = weights
    return statistics.median(times)


def main() -> None:
    p = h.parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--epochs", type=int, default=12, help="epochs per run (the first is left out: it compiles)")
    args = p.parse_args()
    keras = _setup()
    import jax
    from mlflow.tracking import MlflowClient

    from src.tracking import liveness

    beat_s = liveness.EPOCH_BEAT_S
    work = h.Workspace()
    client = MlflowClient(work.store)
    experiment_id = client.create_experiment("bench_host_work")
    data_dir = Path(tempfile.mkdtemp(dir=work.path))
    write_mnist(data_dir / "mnist.npz", scale=0.01)  # 600 training images, 100 of them validation
    print(f"Keras {keras.__version__}, jax {jax.__version__}, device {jax.devices()[0]}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    figures, raw = {}, {}
    for name, units in MODELS.items():
        ds, mcfg, ocfg = _configs(data_dir, units)
        sides = {side: [] for side in SIDES}
        for r in range(args.repeats):
            order = list(SIDES)[r % len(SIDES):] + list(SIDES)[: r % len(SIDES)]
            for side in order:
                result = _run(keras, side, ds, mcfg, ocfg, args.epochs, client, experiment_id,
                              work.path / f"{name}-{side.replace(' ', '-')}-{r}", beat_s)
                model = result.pop("model")
                sides[side].append(result)
                print(f"  {name} round {r + 1}/{args.repeats} {side}: callbacks "
                      f"[{' '.join(f'{x:.1f}' for x in result['inside_ms'][1:])}] ms per epoch", flush=True)
        params = model.count_params()
        alone = _write_alone(model, work.path / f"{name}-alone")
        steady = {side: {k: [statistics.median(r[k][1:]) for r in runs] for k in ("inside_ms", "wall_ms")}
                  for side, runs in sides.items()}
        rows = [[side, f"{h.median(s['inside_ms']):.2f}", " ".join(f"{x:.2f}" for x in s["inside_ms"]),
                 f"{h.median(s['wall_ms']):.1f}"] for side, s in steady.items()]
        print(f"\n{name} ({params:,} weights; epochs 2..{args.epochs}, medians per round):")
        print(h.table(rows, ["side", "callbacks ms/epoch", "per round", "epoch wall ms"]))
        ratio = h.median(steady["before"]["inside_ms"]) / h.median(steady["after"]["inside_ms"])
        wall = {side: h.median(s["wall_ms"]) - h.median(steady["none"]["wall_ms"]) for side, s in steady.items()}
        print(f"callbacks before / after: {ratio:.0f}x. Epoch wall minus the loop alone's: "
              f"{', '.join(f'{side} {ms:.1f} ms' for side, ms in wall.items() if side != 'none')}. "
              f"One checkpoint written alone (the writer thread's work per epoch): {alone:.1f} ms\n", flush=True)
        figures[name] = {"weights": params, "callbacks_ms": {s: h.median(v["inside_ms"]) for s, v in steady.items()},
                         "epoch_wall_ms": {s: h.median(v["wall_ms"]) for s, v in steady.items()},
                         "callbacks_ratio_before_over_after": ratio, "writer_commit_ms": alone,
                         "epoch_wall_minus_none_ms": wall}
        raw[name] = sides
    figures["load_avg"] = os.getloadavg()
    h.write("bench_host_work", args, figures, raw)


if __name__ == "__main__":
    main()
