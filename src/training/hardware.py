"""The GPU guard, device memory, mixed precision and multi-GPU distribution, for each Keras backend.

`backend.activate` has already set what a backend reads at import (visible devices, JAX's
preallocation); this runs after Keras is imported and before any model is built.
"""

from __future__ import annotations

import contextlib
import logging
import os

import keras

from ..config import Accelerator, Backend, Strategy
from ..errors import UserError

log = logging.getLogger(__name__)

GPU_INSTALL = {
    Backend.tensorflow: "pip install -e '.[gpu]' (tensorflow[and-cuda])",
    Backend.jax: 'pip install "jax[cuda12]" (or "jax[cuda13]" for CUDA 13 drivers)',
    Backend.torch: "a CUDA build of PyTorch (on Linux x86_64, pip install torch installs one)",
}


class HardwareError(UserError):
    """The requested hardware is not there; the message names the fix."""


def gpus(backend: Backend) -> list[str]:
    """The GPUs the backend sees, by name."""
    if backend == Backend.tensorflow:
        import tensorflow as tf

        found = tf.config.list_physical_devices("GPU")
        return [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in found]
    if backend == Backend.jax:
        import jax

        try:
            return [d.device_kind for d in jax.devices("gpu")]
        except RuntimeError:  # no GPU platform in this jaxlib, or none visible
            return []
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def setup(cfg, backend: Backend):
    """Configure the backend for `cfg` (a hardware config); return (a scope to build the model in, device text)."""
    found = gpus(backend)
    accelerator = Accelerator(cfg.accelerator)
    if accelerator == Accelerator.gpu and not found:
        raise HardwareError(
            f"hardware={cfg.name}, but {backend.value} sees no GPU "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}).\n"
            "Refusing to train on the CPU instead. Fix: run on a GPU node (sbatch --gres=gpu:1), "
            f"install the backend's CUDA build: {GPU_INSTALL[backend]}, or choose hardware=auto or hardware=cpu."
        )
    if backend == Backend.tensorflow and cfg.memory_growth:
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            with contextlib.suppress(RuntimeError):  # already initialised by an earlier job in this process
                tf.config.experimental.set_memory_growth(gpu, True)

    # Global state: reset every run, so one multirun job's choice does not leak into the next.
    keras.mixed_precision.set_global_policy("mixed_float16" if cfg.mixed_precision else "float32")
    if backend == Backend.jax:
        keras.distribution.set_distribution(None)

    scope = contextlib.nullcontext()
    if Strategy(cfg.strategy) == Strategy.mirrored:
        scope, device = _data_parallel(cfg, backend, found)
    elif found and accelerator != Accelerator.cpu:
        device = f"GPU: {found[0]}"
    else:
        device = "CPU" + (" (GPUs visible but hardware=cpu)" if found else " (no GPU visible)")
    if cfg.mixed_precision:
        device += ", mixed_float16"
    log.info("Training on %s with Keras %s on %s", device, keras.__version__, backend.value)
    return scope, device


def _data_parallel(cfg, backend: Backend, found: list[str]):
    if backend == Backend.tensorflow:
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy(devices=list(cfg.devices) if cfg.devices else None)
        return strategy.scope(), f"{strategy.num_replicas_in_sync} replicas: " + ", ".join(strategy.extended.worker_devices)
    if backend == Backend.jax:
        devices = list(cfg.devices) if cfg.devices else keras.distribution.list_devices("gpu" if found else "cpu")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return contextlib.nullcontext(), f"{len(devices)} devices (keras.distribution.DataParallel): {', '.join(devices)}"
    raise HardwareError(
        "hardware.strategy=mirrored is not available on backend=torch (Keras has no multi-device distribution "
        "for PyTorch). Fix: backend=tensorflow or backend=jax, or one GPU: hardware=gpu."
    )
