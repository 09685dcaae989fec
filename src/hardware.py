"""Device choice, the GPU guard, distribution strategy and mixed precision."""

from __future__ import annotations

import logging
import os

from .config import Accelerator, Strategy

log = logging.getLogger(__name__)


class HardwareError(RuntimeError):
    """The requested hardware is not there; the message names the fix."""


def setup(cfg):
    """Configure TensorFlow for `cfg` (a hardware config); return (strategy, device description).

    Call before any tensor is created: memory growth can only be set on an uninitialised GPU.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    accelerator = Accelerator(cfg.accelerator)
    if accelerator == Accelerator.gpu and not gpus:
        raise HardwareError(
            "hardware=gpu, but TensorFlow sees no GPU "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, "
            f"tensorflow {tf.__version__}, built with CUDA: {tf.test.is_built_with_cuda()}).\n"
            "Refusing to train on the CPU instead. Fix: run on a GPU node (sbatch --gres=gpu:1), "
            "install a CUDA build (pip install 'tensorflow[and-cuda]'), or choose hardware=auto or hardware=cpu."
        )
    if cfg.memory_growth:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialised by an earlier job in this process
                pass

    # Global state: reset every run, so one multirun job's choice does not leak into the next.
    keras.mixed_precision.set_global_policy("mixed_float16" if cfg.mixed_precision else "float32")

    if Strategy(cfg.strategy) == Strategy.mirrored:
        devices = list(cfg.devices) if cfg.devices else None
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        device = f"{strategy.num_replicas_in_sync} replicas: " + ", ".join(strategy.extended.worker_devices)
    elif gpus and accelerator != Accelerator.cpu:
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0")  # as on a CPU: see below
        details = tf.config.experimental.get_device_details(gpus[0])
        device = f"GPU: {details.get('device_name', gpus[0].name)}"
    else:
        # OneDeviceStrategy, not the default strategy: with IMDB's sparse batches the default strategy
        # trained to a systematically lower accuracy (4 epochs, seeds 42-44: test 0.864-0.869, against
        # 0.882-0.884 for the lab's plain dense Keras code and 0.883-0.884 here), cause not found; it was
        # 2-4x faster per sparse step on a CPU (benchmarks/bench_imdb.py), but results come first.
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        device = "CPU" + (" (GPUs visible but hardware=cpu)" if gpus else " (no GPU visible)")
    if cfg.mixed_precision:
        device += ", mixed_float16"
    log.info("Training on %s", device)
    return strategy, device
