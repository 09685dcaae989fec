"""GPU check: the MNIST dense net (5 epochs) and the IMDB net (4 epochs) with hardware=gpu,
mixed precision and XLA off and on; prints the GPU, per-epoch times and accuracies.

    bash benchmarks/gpu_check.sh                     # on a GPU machine (no Slurm needed), < 5 min
    bash benchmarks/gpu_check.sh --hardware cpu --scale 0.05 --mnist-epochs 2 --imdb-epochs 1   # the logic, on a CPU

--backend jax (for a GPU machine without TensorFlow, like the H100 one): nothing imports TensorFlow; it
times Keras's JAX `fit` against the compiled epochs (trainer.loop=compiled, src/compiled.py) on both nets
(benchmarks/bench_compiled.py, alternating, per-seed test accuracies), then runs `python -m src.train
backend=jax` once with trainer.loop=fit and once with trainer.loop=compiled, end to end (MLflow included).

Real data when the data directory ($LE5_DATA_DIR or --data-dir) has mnist.npz and imdb.npz,
synthetic files of the same shape otherwise (benchmarks/synthetic.py). Goal: MNIST 5 epochs in
<= 5 s of training wall time (sum of epoch times) on one H100.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import harness as h
from . import synthetic

MNIST_GOAL_S = 5.0


def variants(hardware: str, mnist_epochs: int, imdb_epochs: int, scale: float = 1.0) -> list[tuple[str, list[str]]]:
    mnist = ["model=mnist_dense", f"trainer.epochs={mnist_epochs}", f"hardware={hardware}"]
    imdb = ["model=imdb_dense", f"trainer.epochs={imdb_epochs}", f"hardware={hardware}"]
    if scale != 1.0:  # smaller synthetic files: hold out the same fraction for validation
        mnist.append(f"dataset.validation_size={max(int(5000 * scale), 1)}")
        imdb.append(f"dataset.validation_size={max(int(10000 * scale), 1)}")
    return [
        ("MNIST dense", mnist),
        ("MNIST dense, mixed precision", [*mnist, "hardware.mixed_precision=true"]),
        ("MNIST dense, XLA", [*mnist, "hardware.jit_compile=true"]),
        ("MNIST dense, mixed precision + XLA", [*mnist, "hardware.mixed_precision=true", "hardware.jit_compile=true"]),
        ("MNIST dense, XLA + 50 steps/execution", [*mnist, "hardware.jit_compile=true",
                                                   "hardware.steps_per_execution=50"]),
        ("IMDB 16-16-1 (sparse)", imdb),
        ("IMDB 16-16-1 (sparse), mixed precision", [*imdb, "hardware.mixed_precision=true"]),
    ]


def describe_gpu() -> None:
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv"],
                       check=False)
    else:
        print("nvidia-smi: not found")
    subprocess.run([sys.executable, "-c", "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='2'; import tensorflow as tf; "
                    "print('tensorflow', tf.__version__, 'built with CUDA:', tf.test.is_built_with_cuda(), "
                    "'GPUs:', tf.config.list_physical_devices('GPU'))"], check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("LE5_DATA_DIR"))
    p.add_argument("--hardware", default="gpu", help="hardware config (cpu: check this script on a CPU machine)")
    p.add_argument("--mnist-epochs", type=int, default=5)
    p.add_argument("--imdb-epochs", type=int, default=4)
    p.add_argument("--synthetic", action="store_true", help="synthetic data even when real files are there")
    p.add_argument("--scale", type=float, default=1.0, help="synthetic data size as a fraction of the real one")
    p.add_argument("--dry-run", action="store_true", help="print the runs, run nothing")
    p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/gpu_check.json)")
    p.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax"],
                   help="jax: fit vs compiled epochs on Keras's JAX backend, no TensorFlow import")
    p.add_argument("--repeats", type=int, default=None, help="--backend jax: rounds of fit vs compiled (default 2)")
    args = p.parse_args()
    if args.backend == "jax":
        return jax_check(args)
    args.repeats = 1

    real = args.data_dir and all((Path(args.data_dir) / f).is_file() for f in ("mnist.npz", "imdb.npz"))
    runs = variants(args.hardware, args.mnist_epochs, args.imdb_epochs,
                    1.0 if real and not args.synthetic else args.scale)
    if args.dry_run:
        print(f"data: {'real, ' + args.data_dir if real and not args.synthetic else 'synthetic'}")
        for name, overrides in runs:
            print(f"{name}: python -m src.train {' '.join(overrides)}")
        return 0

    describe_gpu()
    tmp = tempfile.TemporaryDirectory(prefix="le5-gpu-check-")
    if real and not args.synthetic:
        data, kind = Path(args.data_dir).resolve(), "real"
    else:
        data, kind = Path(tmp.name) / "data", f"synthetic (scale {args.scale}; accuracies mean nothing)"
        data.mkdir()
        synthetic.write_mnist(data / "mnist.npz", args.scale)
        synthetic.write_imdb(data / "imdb.npz", args.scale)
    print(f"data: {kind}, {data}\n", flush=True)

    ws = h.Workspace()
    env = {"LE5_DATA_DIR": str(data)}
    results, failures = {}, []
    try:
        for name, overrides in runs:
            try:
                r = h.spawn(["project", *ws.project_overrides(*overrides, "tracking.log_model=false")], env,
                            timeout=600)
            except RuntimeError as err:  # one failing option must not hide the others' figures
                failures.append(name)
                print(f"{name}: FAILED\n{err}\n", flush=True)
                continue
            results[name] = r
            times = " ".join(f"{t:.2f}" for t in r["epoch_times"])
            acc = r["history"][-1].get("val_accuracy", float("nan"))
            print(f"{name}: epochs [{times}] s, training {sum(r['epoch_times']):.2f} s, "
                  f"val acc {acc:.4f}, test acc {r['test'].get('test_accuracy', float('nan')):.4f}", flush=True)
    finally:
        ws.close()
        tmp.cleanup()

    rows = [[name, f"{r['epoch_times'][0]:.2f}", f"{h.steady_epoch(r):.3f}", f"{sum(r['epoch_times']):.2f}",
             f"{r['history'][-1].get('val_accuracy', float('nan')):.4f}", f"{r['test'].get('test_accuracy', 0):.4f}"]
            for name, r in results.items()]
    print("\n" + h.table(rows, ["run", "epoch 1 s", "later epochs s", "training s", "val acc", "test acc"]))
    mnist = {n: sum(r["epoch_times"]) for n, r in results.items() if n.startswith("MNIST")}
    if mnist and args.mnist_epochs == 5:
        best = min(mnist, key=mnist.get)
        print(f"\nfastest MNIST 5 epochs: {mnist[best]:.2f} s ({best}); goal <= {MNIST_GOAL_S} s: "
              f"{h.verdict(mnist[best], MNIST_GOAL_S)}")
    h.write("gpu_check", args, {"data": kind, "hardware": args.hardware, "training_s": {n: sum(r["epoch_times"])
                                for n, r in results.items()}, "failures": failures}, results)
    return 1 if failures else 0


def _data(args, tmp: str) -> tuple[Path, str, list[str]]:
    """The data folder, what it holds, and the dataset overrides it needs (synthetic: no known digest)."""
    real = args.data_dir and all((Path(args.data_dir) / f).is_file() for f in ("mnist.npz", "imdb.npz"))
    if real and not args.synthetic:
        return Path(args.data_dir).resolve(), "real", []
    data = Path(tmp) / "data"
    data.mkdir()
    synthetic.write_mnist(data / "mnist.npz", args.scale)
    synthetic.write_imdb(data / "imdb.npz", args.scale)
    return data, f"synthetic (scale {args.scale}; accuracies mean nothing)", ["dataset.sha256=null"]


def jax_check(args) -> int:
    """--backend jax: the GPU as JAX sees it, fit vs compiled epochs timed, then the CLI with each loop."""
    repeats = args.repeats or 2
    runs = [(f"{name}, trainer.loop={loop}", [f"model={model}", f"trainer.epochs={epochs}", f"trainer.loop={loop}"])
            for name, model, epochs in (("MNIST dense", "mnist_dense", args.mnist_epochs),
                                        ("IMDB 16-16-1", "imdb_dense", args.imdb_epochs))
            for loop in ("fit", "compiled")]
    bench = [sys.executable, "-m", "benchmarks.bench_compiled", "--hardware", args.hardware, "--repeats", str(repeats),
             "--mnist-epochs", str(args.mnist_epochs), "--imdb-epochs", str(args.imdb_epochs),
             "--out", args.out or str(h.RESULTS / f"gpu_check_jax_{args.hardware}.json")]
    if args.dry_run:
        print(" ".join(bench + ["--data-dir", "DATA"]))
        for name, overrides in runs:
            print(f"{name}: python -m src.train backend=jax hardware={args.hardware} {' '.join(overrides)}")
        return 0
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv"], check=False)
    subprocess.run([sys.executable, "-c", "import jax; print('jax', jax.__version__, 'devices:', jax.devices())"],
                   check=False)
    failures = []
    with tempfile.TemporaryDirectory(prefix="le5-gpu-check-") as tmp:
        data, kind, data_overrides = _data(args, tmp)
        print(f"data: {kind}, {data}\n", flush=True)
        if kind != "real":
            small = max(int(5000 * args.scale), 10)
            bench += ["--small", str(small)]
            data_overrides += [f"dataset.validation_size={small}"]
        if subprocess.run([*bench, "--data-dir", str(data)], cwd=h.ROOT, check=False).returncode:
            failures.append("bench_compiled")
        for i, (name, overrides) in enumerate(runs):
            command = [sys.executable, "-m", "src.train", "backend=jax", f"hardware={args.hardware}", *overrides,
                       *data_overrides, f"data_dir={data}", f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db",
                       "tracking.log_model=false", f"hydra.run.dir={tmp}/run{i}"]
            done = subprocess.run(command, cwd=h.ROOT, capture_output=True, text=True, check=False, timeout=900)
            lines = [line for line in (done.stdout + done.stderr).splitlines()
                     if any(k in line for k in ("Training loop:", " - loss:", "Test:", "Error", "Traceback"))]
            print(f"\n{name}: exit {done.returncode}\n  " + "\n  ".join(lines), flush=True)
            if done.returncode:
                failures.append(name)
                print((done.stdout + done.stderr)[-3000:])
    print(f"\nfailures: {', '.join(failures) or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
