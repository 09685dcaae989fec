"""Compiled epochs vs model.fit on Keras's JAX backend: the lab's MNIST dense net and IMDB 16-16-1, one process.

    LE5_DATA_DIR=/work/shared/data python -m benchmarks.bench_compiled [--repeats 3] [--hardware cpu]

Each round builds the same model from the same seed twice and trains it with `model.fit` (the project's
fit path: uint8 arrays, or MultiHotBatches for IMDB) and with src/training/compiled.py's Epochs, alternating which
goes first; round r uses seed 42 + r. No MLflow: only the loops are timed. Figures: the median steady-state
epoch time (epochs 2..N, train + validation; epoch 1 also compiles) of each loop, the ratio fit / compiled,
and test accuracies per seed (the same seeds should give accuracies equal in distribution).
--hardware gpu (on a GPU machine, e.g. via benchmarks/gpu_check.sh --backend jax) times the GPU instead.
"""

from __future__ import annotations

import os
import sys
import time

from . import harness as h

MODELS = {"mnist": ("mnist_dense", 5, 128), "imdb": ("imdb_dense", 4, 512)}  # model, default epochs, batch size


def _setup(hardware: str):
    """Keras on JAX (nothing imports TensorFlow), with hardware=cpu or gpu."""
    from omegaconf import OmegaConf

    from src.training import backend
    from src import config

    hw = OmegaConf.merge(OmegaConf.structured(config.HardwareConfig),
                         OmegaConf.load(h.ROOT / "conf" / "hardware" / f"{hardware}.yaml"))
    backend.activate(config.Backend.jax, hw)
    import keras

    from src.training import hardware as hwmod

    hwmod.setup(hw, config.Backend.jax)
    return keras, hw


def _configs(name: str, data_dir, small: int | None = None):
    from omegaconf import OmegaConf

    from src import config
    from src.data import datasets as data

    model_name = MODELS[name][0]
    yaml = OmegaConf.load(h.ROOT / "conf" / "model" / f"{model_name}.yaml")
    dcfg = OmegaConf.merge(OmegaConf.structured(config.DatasetConfig),
                           OmegaConf.load(h.ROOT / "conf" / "dataset" / f"{name}.yaml"))
    if small:  # another file (synthetic, smaller): no known digest, a validation split that fits
        dcfg.sha256, dcfg.validation_size = None, small
    mcfg = OmegaConf.merge(OmegaConf.structured(config.ModelConfig), yaml["model"])
    ocfg = OmegaConf.merge(OmegaConf.structured(config.OptimizerConfig),
                           OmegaConf.load(h.ROOT / "conf" / "optimizer" / "rmsprop.yaml"))
    return data.load(dcfg, data_dir), mcfg, ocfg


def _train(keras, loop: str, ds, mcfg, ocfg, epochs: int, batch_size: int, seed: int, budget: float) -> dict:
    import jax

    from src.training import batches
    from src.training import compiled, models

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = models.build_model(mcfg, ds.spec)
    model.compile(optimizer=models.build_optimizer(ocfg), loss=ds.spec.loss, metrics=["accuracy"])
    times, history = [], []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)
            history.append({k: float(v) for k, v in logs.items()})

    if loop == "compiled":
        device = jax.devices()[0]
        epochs_ = compiled.Epochs(model, ds, batch_size, seed, int(budget * compiled.free_device_bytes(device)))
        epochs_.fit(epochs, callbacks=[Timer()], verbose=0)
        test = epochs_.evaluate("test")
    else:
        model.fit(**batches.fit_args(ds.train, batch_size, shuffle=True, seed=seed),
                  validation_data=batches.validation_data(ds.val, batch_size), epochs=epochs,
                  callbacks=[Timer()], verbose=0)
        test = model.evaluate(**batches.fit_args(ds.test, batch_size), return_dict=True, verbose=0)
    return {"epoch_times": times, "history": history, "test": {f"test_{k}": float(v) for k, v in test.items()},
            "steps": int(model.optimizer.iterations), "seed": seed}


def main() -> None:
    p = h.parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--hardware", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--datasets", default="mnist,imdb")
    p.add_argument("--mnist-epochs", type=int, default=MODELS["mnist"][1])
    p.add_argument("--imdb-epochs", type=int, default=MODELS["imdb"][1])
    p.add_argument("--seed", type=int, default=42, help="round r uses seed SEED + r")
    p.add_argument("--budget", type=float, default=0.5, help="hardware.device_data_budget for the compiled loop")
    p.add_argument("--small", type=int, default=None, metavar="N",
                   help="other (synthetic, small) files: skip the sha256 check, hold out N samples for validation")
    args = p.parse_args()
    data_dir = h.data_dir(args)
    keras, _ = _setup(args.hardware)
    import jax

    print(f"Keras {keras.__version__}, jax {jax.__version__}, device {jax.devices()[0]}, "
          f"tensorflow imported: {'tensorflow' in sys.modules and sys.modules['tensorflow'] is not None}", flush=True)
    figures, raw = {}, {}
    for name in args.datasets.split(","):
        ds, mcfg, ocfg = _configs(name, data_dir, args.small)
        batch_size = MODELS[name][2]
        epochs = getattr(args, f"{name}_epochs")
        sides = {loop: [] for loop in ("fit", "compiled")}
        for r in range(args.repeats):
            order = ["fit", "compiled"] if r % 2 == 0 else ["compiled", "fit"]
            for loop in order:
                t = time.time()
                result = _train(keras, loop, ds, mcfg, ocfg, epochs, batch_size, args.seed + r, args.budget)
                sides[loop].append(result)
                print(f"  {name} round {r + 1}/{args.repeats} seed {args.seed + r}: {loop} {time.time() - t:.1f} s, epochs "
                      f"[{' '.join(f'{x:.2f}' for x in result['epoch_times'])}] s, test acc "
                      f"{result['test']['test_accuracy']:.4f}, {result['steps']} steps", flush=True)
        steady = {loop: [h.steady_epoch(r) for r in rs] for loop, rs in sides.items()}
        ratios = [f / c for f, c in zip(steady["fit"], steady["compiled"])]
        rows = [[loop, f"{h.median(steady[loop]):.3f}", h.spread(steady[loop]),
                 f"{h.median(r['epoch_times'][0] for r in rs):.2f}",
                 " ".join(f"{r['test']['test_accuracy']:.4f}" for r in rs)] for loop, rs in sides.items()]
        print(f"\n{name} ({mcfg.name}, {epochs} epochs, batch {batch_size}, {jax.devices()[0].platform}):")
        print(h.table(rows, ["loop", "epoch s (median, epochs 2..N)", "range", "epoch 1 s", "test acc per seed"]))
        print(f"fit / compiled per round: {', '.join(f'{x:.2f}' for x in ratios)}; median {h.median(ratios):.2f}\n",
              flush=True)
        figures[name] = {"epoch_s_fit": h.median(steady["fit"]), "epoch_s_compiled": h.median(steady["compiled"]),
                         "ratio_fit_over_compiled": h.median(ratios), "ratio_per_round": ratios,
                         "test_accuracy": {loop: [r["test"]["test_accuracy"] for r in rs] for loop, rs in sides.items()}}
        raw[name] = sides
    figures["load_avg"] = os.getloadavg()
    h.write("bench_compiled" if args.hardware == "cpu" else f"bench_compiled_{args.hardware}", args, figures, raw)


if __name__ == "__main__":
    main()
