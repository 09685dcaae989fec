"""What this machine gives the project, in a few seconds and without training: the lab's "check that your
compute node has a working GPU", made one command.

    python -m src.doctor                       # the default configuration
    python -m src.doctor backend=jax hardware=gpu model=imdb_dropout   # the same overrides as src.train

One line per check, ✓ or ✗ with the fix. Exits 1 when the configuration given cannot run here (its backend
missing, hardware=gpu without a GPU, its data file missing or not the known one, its tracking store unusable),
else 0. Each installed backend is probed in its own child process, all at once, so a slow TensorFlow import
does not add to JAX's, and nothing is imported into this process but Hydra and MLflow.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from .training import backend, compilation_cache
from . import config
from .data import datasets
from .tracking import provenance
from .config import Accelerator, Backend
from .paths import PROJECT_ROOT
from .tracking.redaction import redact

OK, BAD = "✓", "✗"

# Each runs in a child (`python -m src.doctor --probe NAME`) and returns what that backend sees.
def _probe_tensorflow() -> dict:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {
        "version": tf.__version__,
        "cuda": tf.sysconfig.get_build_info().get("cuda_version"),
        "gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus],
    }


def _probe_jax() -> dict:
    import jax

    try:
        gpus = jax.devices("gpu")
    except RuntimeError:  # a CPU-only jaxlib, or no GPU visible
        gpus = []

    def memory(device) -> str:
        stats = device.memory_stats() or {}
        return f" ({stats['bytes_limit'] / 2**30:.0f} GiB)" if "bytes_limit" in stats else ""

    return {"version": jax.__version__, "gpus": [d.device_kind + memory(d) for d in gpus]}


def _probe_torch() -> dict:
    import torch

    gpus = [
        f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
        for i in range(torch.cuda.device_count())
    ]
    return {"version": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus}


PROBES = {"tensorflow": _probe_tensorflow, "jax": _probe_jax, "torch": _probe_torch}


def probe(name: str) -> dict:
    """Import one backend in a child process and describe it; {"error": ...} when that fails."""
    quiet = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "3"}  # no GPU grab, no C++ chatter
    try:
        done = subprocess.run(
            [sys.executable, "-m", "src.doctor", "--probe", name], cwd=PROJECT_ROOT, capture_output=True, text=True,
            timeout=120, env={**os.environ, **quiet},
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode == 0 and lines:
            return json.loads(lines[-1])
        return {"error": (done.stderr.strip().splitlines() or ["exited " + str(done.returncode)])[-1][:300]}
    except (OSError, subprocess.SubprocessError) as err:
        return {"error": str(err)}


def _nvidia_smi() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.replace("\n", "; ") or None


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    config.register()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def run(overrides: list[str]) -> int:
    lines: list[tuple[bool, str]] = []
    fatal = False

    def say(good: bool, text: str, blocks: bool = False) -> None:
        nonlocal fatal
        lines.append((good, text))
        print(f"{OK if good else BAD} {text}", flush=True)
        fatal |= blocks and not good

    cfg = _compose(overrides)
    choices = dict(cfg.hydra.runtime.choices)
    try:
        config.validate(cfg, choices)
        say(True, f"configuration: model={cfg.model.name} dataset={cfg.dataset.name} hardware={cfg.hardware.name}")
    except config.ConfigError as err:
        say(False, str(err), blocks=True)
    say(sys.version_info[:2] >= (3, 10), f"Python {platform.python_version()} ({sys.executable})", blocks=True)

    chosen, why = backend.choose(cfg.backend)
    with ThreadPoolExecutor(max_workers=len(Backend)) as pool:  # the backends' imports overlap
        found = {b: pool.submit(probe, b.value) if _installed(b) else None for b in Backend}
        keras_version = provenance.version("keras")
        say(keras_version != "unknown", f"Keras {keras_version}", blocks=True)
        for b, future in found.items():
            mark = " (chosen: " + why + ")" if b == chosen else ""
            if future is None:
                say(False, f"{b.value}: not installed{mark}. Fix: {backend.INSTALL[b]}", blocks=b == chosen)
                continue
            info = future.result()
            if "error" in info:
                say(False, f"{b.value}: does not import ({info['error']}){mark}", blocks=b == chosen)
                continue
            gpus = ", ".join(info["gpus"]) or "none"
            cuda = f", CUDA {info['cuda']}" if info.get("cuda") else ""
            say(True, f"{b.value} {info['version']}{cuda}: GPUs {gpus}{mark}")
            if b == chosen and Accelerator(cfg.hardware.accelerator) == Accelerator.gpu and not info["gpus"]:
                say(False, f"hardware={cfg.hardware.name} needs a GPU, and {b.value} sees none. Fix: a GPU node "
                    f"(sbatch --gres=gpu:1), the backend's CUDA build, or hardware=auto", blocks=True)
    good, line = compilation_cache.describe(cfg.hardware.compilation_cache_dir)
    say(good, line + ("" if chosen == Backend.jax else " (used by backend=jax)"))
    smi = _nvidia_smi()
    say(smi is not None or Accelerator(cfg.hardware.accelerator) != Accelerator.gpu,
        f"nvidia-smi: {smi}" if smi else "nvidia-smi: not found (no NVIDIA driver on this machine)")

    directory = datasets.data_dir(cfg.data_dir)
    for name, dataset in datasets.datasets().items():
        chosen_data = name == cfg.dataset.name
        path = directory / dataset.file
        if not path.is_file():
            fix = f"python -m src.data download --dataset {name} --data-dir {directory} (where there is internet)"
            say(False, f"data {name}: {path} missing. Fix: {fix}", blocks=chosen_data and not dataset.download)
        elif broken := datasets.damage(dataset, path):  # an interrupted copy: never usable, sha256 or not
            fix = f"delete it, then python -m src.data download --dataset {name} --data-dir {directory}"
            say(False, f"data {name}: {path} is {broken}. Fix: {fix}", blocks=chosen_data)
        elif dataset.sha256 and datasets.digest(path) != dataset.sha256:
            say(False, f"data {name}: {path} is not the known file (sha256 differs). Fix: download it again",
                blocks=chosen_data and cfg.dataset.sha256 is not None)
        else:
            say(True, f"data {name}: {path}" + (" (sha256 matches)" if dataset.sha256 else ""))

    from .tracking import store

    uri = store.tracking_uri(cfg.tracking.tracking_uri)
    try:
        store.check(uri)
        say(True, f"tracking store {redact(uri)}: reachable, writable")
        if store.is_server(uri):
            from .tracking import auth

            say(*auth.describe(redact(uri), cfg.tracking.experiment_name), blocks=True)
    except store.TrackingError as err:
        say(False, str(err).replace("\n", " "), blocks=True)

    for command in ("sbatch", "squeue"):
        where = shutil.which(command)
        say(where is not None, f"{command}: {where or 'not found (only needed on a SLURM login node)'}")
    print(f"{'cannot run' if fatal else 'ready'}: backend={chosen.value}, hardware={cfg.hardware.name}")
    return 1 if fatal else 0


def _installed(b: Backend) -> bool:
    import importlib.util

    return importlib.util.find_spec(backend.PACKAGES[b]) is not None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        print(json.dumps(PROBES[argv[1]]()))
        return 0
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
