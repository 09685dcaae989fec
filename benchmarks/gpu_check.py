"""GPU check: the MNIST dense net (5 epochs) and the IMDB net (4 epochs) through `python -m src.train` with
hardware=gpu on one Keras backend, each against the plain Keras script on the same backend; prints the GPU, a
table per backend and training loop (epoch 1, steady epoch, test accuracy, plain Keras's steady epoch, ratio).

    bash benchmarks/gpu_check.sh --backend jax                 # on a GPU machine (no Slurm needed), < 5 min
    bash benchmarks/gpu_check.sh --backend jax,torch           # several backends, one after the other
    bash benchmarks/gpu_check.sh --hardware cpu --scale 0.05   # the logic, on a CPU (a dry check)

Real data when the data directory ($LE5_DATA_DIR, --data-dir, else <project>/data) has mnist.npz and imdb.npz,
synthetic files of the same shape otherwise (benchmarks/synthetic.py). With --scale < 1 the runs use that fraction
of the files' training and test samples (real or synthetic): checks of the script, not of speed or accuracy.
Goal: src.train's steady epoch <= 1.1x plain Keras `fit` on the same backend.

Loops: `fit` (Keras's model.fit) on every backend, `compiled` (trainer.loop=compiled, src/training/compiled.py) on jax;
--bench-compiled also runs benchmarks/bench_compiled.py (fit vs compiled epochs alternating, per-seed accuracies).
Extending: a training loop is a function in LOOPS returning its runs for a backend (see `fit_runs`); `--loop`
picks loops by name. Each run is (name, src.train overrides, plain Keras child mode or None).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import harness as h
from . import synthetic

RATIO_GOAL = 1.1


def _common(hardware: str, backend: str, epochs: int, model: str, validation: int, scale: float) -> list[str]:
    runs = [f"model={model}", f"trainer.epochs={epochs}", f"hardware={hardware}", f"backend={backend}",
            "tracking.log_model=false"]
    if scale != 1.0:  # fewer samples: hold out the same fraction for validation
        runs.append(f"dataset.validation_size={max(int(validation * scale), 1)}")
    return runs


def fit_runs(backend: str, hardware: str, mnist_epochs: int, imdb_epochs: int, scale: float) -> list[tuple]:
    """Keras's model.fit (trainer.loop=fit): the lab's nets, and the options that matter on a GPU."""
    mnist = [*_common(hardware, backend, mnist_epochs, "mnist_dense", 5000, scale), "trainer.loop=fit"]
    imdb = [*_common(hardware, backend, imdb_epochs, "imdb_dense", 10000, scale), "trainer.loop=fit"]
    runs = [
        ("MNIST dense", mnist, "lab_mnist"),
        ("MNIST dense, 50 steps/execution", [*mnist, "hardware.steps_per_execution=50"], None),
        ("MNIST dense, mixed precision", [*mnist, "hardware.mixed_precision=true"], None),
        ("IMDB 16-16-1", imdb, "dense_imdb"),
    ]
    if backend == "torch":  # Keras's jit_compile on torch is torch.compile: worth a look, off by default
        runs.insert(2, ("MNIST dense, torch.compile", [*mnist, "hardware.jit_compile=true"], None))
    return runs


def compiled_runs(backend: str, hardware: str, mnist_epochs: int, imdb_epochs: int, scale: float) -> list[tuple]:
    """trainer.loop=compiled (src/training/compiled.py: one jitted lax.scan per epoch), JAX only; plain Keras fit beside."""
    if backend != "jax":
        return []
    return [
        ("MNIST dense", [*_common(hardware, backend, mnist_epochs, "mnist_dense", 5000, scale), "trainer.loop=compiled"],
         "lab_mnist"),
        ("IMDB 16-16-1", [*_common(hardware, backend, imdb_epochs, "imdb_dense", 10000, scale), "trainer.loop=compiled"],
         "dense_imdb"),
    ]


LOOPS = {"fit": fit_runs, "compiled": compiled_runs}  # trainer.loop values this check runs; one function per loop


def describe(backend: str) -> None:
    """The GPU as nvidia-smi and the backend see it (a fresh process: the backend's import stays out of this one)."""
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv"],
                       check=False)
    else:
        print("nvidia-smi: not found")
    probe = {
        "tensorflow": "import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='2'; import tensorflow as tf; "
                      "print('tensorflow', tf.__version__, 'built with CUDA:', tf.test.is_built_with_cuda(), "
                      "'GPUs:', tf.config.list_physical_devices('GPU'))",
        "jax": "import jax; print('jax', jax.__version__, 'devices:', jax.devices())",
        "torch": "import torch; print('torch', torch.__version__, 'CUDA:', torch.version.cuda, 'GPUs:', "
                 "[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])",
    }[backend]
    subprocess.run([sys.executable, "-c", probe], check=False)


def _data(args, tmp: Path) -> tuple[Path, str]:
    directory = Path(args.data_dir or h.ROOT / "data").resolve()
    real = all((directory / f).is_file() for f in ("mnist.npz", "imdb.npz")) and not args.synthetic
    if real and args.scale == 1.0:
        return directory, f"real, {directory}"
    data = tmp / "data"
    data.mkdir()
    if real:  # the real files, cut to `scale` of their samples
        synthetic.shrink(directory / "mnist.npz", data / "mnist.npz", args.scale)
        synthetic.shrink(directory / "imdb.npz", data / "imdb.npz", args.scale)
        return data, f"real, {directory}, cut to {args.scale:g} of its samples"
    synthetic.write_mnist(data / "mnist.npz", args.scale)
    synthetic.write_imdb(data / "imdb.npz", args.scale)
    return data, f"synthetic (scale {args.scale:g}; accuracies mean nothing)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.backend_option(p, default=os.environ.get("KERAS_BACKEND") or "tensorflow")
    p.add_argument("--loop", default="fit,compiled",
                   help=f"training loops, comma-separated, from {', '.join(LOOPS)} (default: all; compiled: jax only)")
    p.add_argument("--bench-compiled", action="store_true",
                   help="jax: also benchmarks/bench_compiled.py (fit vs compiled epochs, alternating, per-seed accuracy)")
    p.add_argument("--compiled-repeats", type=int, default=2, help="--bench-compiled: rounds of fit vs compiled (default 2)")
    p.add_argument("--fused", action="store_true",
                   help="jax: also benchmarks/bench_fused.py (--fused-points of mnist_dense x 5 epochs, hydra/launcher=fused "
                        "vs the basic launcher with trainer.loop=fit)")
    p.add_argument("--fused-points", type=int, default=64, help="--fused: points, a multiple of 4 (default 64)")
    p.add_argument("--data-dir", default=os.environ.get("LE5_DATA_DIR"), help="default: $LE5_DATA_DIR, else <project>/data")
    p.add_argument("--hardware", default="gpu", help="hardware config (cpu: check this script on a CPU machine)")
    p.add_argument("--mnist-epochs", type=int, default=5)
    p.add_argument("--imdb-epochs", type=int, default=4)
    p.add_argument("--synthetic", action="store_true", help="synthetic data even when real files are there")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the samples to use (dry checks)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain Keras runs (no ratio)")
    p.add_argument("--dry-run", action="store_true", help="print the runs, run nothing")
    p.add_argument("--timeout", type=int, default=300, help="seconds per run (default 300)")
    p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/gpu_check.json)")
    args = p.parse_args()
    args.repeats = 1  # each run once (the JSON's "repeats")
    backends = h.backends(args)
    loops = [x.strip() for x in args.loop.split(",") if x.strip()]
    if unknown := [x for x in loops if x not in LOOPS]:
        sys.exit(f"--loop {','.join(unknown)}: this check knows {', '.join(LOOPS)}")
    plan = [(b, loop, run) for b in backends for loop in loops
            for run in LOOPS[loop](b, args.hardware, args.mnist_epochs, args.imdb_epochs, args.scale)]
    missing = [b for b in backends if importlib.util.find_spec(b) is None]
    if args.dry_run:
        for b, loop, (name, overrides, plain) in plan:
            print(f"[{b}/{loop}] {name}: python -m src.train {' '.join(overrides)}"
                  + (f"   vs plain Keras: benchmarks/child.py {plain}" if plain and not args.no_plain else ""))
        return 0
    if missing:
        sys.exit(f"--backend {','.join(missing)}: not installed in {sys.executable}")

    tmp = tempfile.TemporaryDirectory(prefix="le5-gpu-check-")
    data, kind = _data(args, Path(tmp.name))
    # a cut or synthetic file is not the dataset's known file: its sha256 check is off for it
    extra = [] if data == Path(args.data_dir or h.ROOT / "data").resolve() else ["dataset.sha256=null"]
    print(f"data: {kind}\n", flush=True)
    ws = h.Workspace()
    env = {"LE5_DATA_DIR": str(data)}
    results, plains, failures = {}, {}, []
    epochs = {"lab_mnist": args.mnist_epochs, "dense_imdb": args.imdb_epochs}
    try:
        for b in backends:
            print(f"== backend {b}", flush=True)
            describe(b)
            for loop in loops:
                for name, overrides, plain in LOOPS[loop](b, args.hardware, args.mnist_epochs, args.imdb_epochs,
                                                           args.scale):
                    key = f"{b}/{loop}: {name}"
                    try:
                        r = h.spawn(["project", *ws.project_overrides(*overrides, *extra)], env,
                                    timeout=args.timeout)
                    except RuntimeError as err:  # one failing option must not hide the others' figures
                        failures.append(key)
                        print(f"{key}: FAILED\n{err}\n", flush=True)
                        continue
                    results[key] = r
                    print(f"{key}: epochs [{' '.join(f'{t:.2f}' for t in r['epoch_times'])}] s, "
                          f"test acc {r['test'].get('test_accuracy', float('nan')):.4f}", flush=True)
                    if plain and not args.no_plain:
                        # the plain script sees the GPU unless hardware=cpu hides it, as src.train does
                        penv = {**env, "KERAS_BACKEND": b}
                        if args.hardware == "cpu":
                            penv.update(CUDA_VISIBLE_DEVICES="", **({"JAX_PLATFORMS": "cpu"} if b == "jax" else {}))
                        try:
                            held_out = next(int(o.split("=")[1]) for o in overrides if o.startswith(
                                "dataset.validation_size=")) if args.scale != 1.0 else None
                            plains[key] = h.spawn([plain, str(epochs[plain]), str(data),
                                                   *([str(held_out)] if held_out else [])], penv, timeout=args.timeout)
                        except RuntimeError as err:
                            failures.append(f"{key} (plain Keras)")
                            print(f"{key}, plain Keras: FAILED\n{err}\n", flush=True)
                            continue
                        pr = plains[key]
                        print(f"{key}, plain Keras: epochs [{' '.join(f'{t:.2f}' for t in pr['epoch_times'])}] s, "
                              f"test acc {pr['test'].get('test_accuracy', float('nan')):.4f}", flush=True)
        if args.bench_compiled and "jax" in backends:
            bench = [sys.executable, "-m", "benchmarks.bench_compiled", "--hardware", args.hardware, "--repeats",
                     str(args.compiled_repeats), "--mnist-epochs", str(args.mnist_epochs), "--imdb-epochs", str(args.imdb_epochs),
                     "--data-dir", str(data), "--out", str(Path(args.out or h.RESULTS / "gpu_check.json").with_name(
                         f"gpu_check_bench_compiled_{args.hardware}.json"))]
            if args.scale != 1.0:
                bench += ["--small", str(max(int(5000 * args.scale), 10))]
            print(f"== {' '.join(bench[1:])}", flush=True)
            if subprocess.run(bench, cwd=h.ROOT, check=False).returncode:
                failures.append("bench_compiled")
        if args.fused and "jax" in backends:
            fused = [sys.executable, "-m", "benchmarks.bench_fused", "--hardware", args.hardware, "--points",
                     str(args.fused_points), "--epochs", str(args.mnist_epochs), "--baseline", "fit", "--overrides", *extra]
            print(f"== {' '.join(fused[1:])}", flush=True)
            if subprocess.run(fused, cwd=h.ROOT, env={**os.environ, "LE5_DATA_DIR": str(data)}, check=False).returncode:
                failures.append("bench_fused")
    finally:
        ws.close()
        tmp.cleanup()

    rows, figures = [], {"data": kind, "hardware": args.hardware, "ratio_goal": RATIO_GOAL, "runs": {},
                         "failures": failures}
    for key, r in results.items():
        steady = h.steady_epoch(r)
        fig = {"epoch1_s": r["epoch_times"][0], "steady_epoch_s": steady,
               "test_accuracy": r["test"].get("test_accuracy", float("nan"))}
        plain = plains.get(key)
        if plain:
            fig.update(plain_epoch1_s=plain["epoch_times"][0], plain_steady_epoch_s=h.steady_epoch(plain),
                       plain_test_accuracy=plain["test"].get("test_accuracy", float("nan")),
                       ratio=steady / h.steady_epoch(plain))
        figures["runs"][key] = fig
        rows.append([key, f"{fig['epoch1_s']:.2f}", f"{steady:.3f}", f"{fig['test_accuracy']:.4f}",
                     f"{fig['plain_steady_epoch_s']:.3f}" if plain else "-",
                     f"{fig['plain_test_accuracy']:.4f}" if plain else "-",
                     f"{fig['ratio']:.2f} {h.verdict(fig['ratio'], RATIO_GOAL)}" if plain else "-"])
    print("\n" + h.table(rows, ["backend/loop: run", "epoch 1 s", "steady epoch s", "test acc",
                                "plain Keras steady s", "plain test acc", f"ratio (goal <= {RATIO_GOAL})"]))
    print(f"(steady epoch: median of epochs 2..N; plain Keras: the lab's script with model.fit on the same backend; "
          f"hardware={args.hardware}; data: {kind})")
    if failures:
        print(f"FAILED: {', '.join(failures)}")
    h.write("gpu_check", args, figures, {"src.train": results, "plain": plains})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
