"""Which Keras backend a run uses: chosen from the config before Keras is imported, since Keras reads
$KERAS_BACKEND once, at its first import."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

from ..config import Accelerator, Backend
from ..errors import UserError
from . import compilation_cache

ENV = "KERAS_BACKEND"
DEFAULT = Backend.tensorflow  # the package the project is built around
PACKAGES = {Backend.tensorflow: "tensorflow", Backend.jax: "jax", Backend.torch: "torch"}
INSTALL = {
    Backend.tensorflow: 'pip install -e ".[dev]" (tensorflow)',
    Backend.jax: 'pip install -e ".[dev]" (jax[cpu]); on GPU nodes pip install "jax[cuda12]" or "jax[cuda13]"',
    Backend.torch: 'pip install -e ".[torch]"',
}


class BackendError(UserError):
    """The backend cannot be used in this process; the message names the fix."""


def choose(configured) -> tuple[Backend, str]:
    """The backend and why: `backend=` wins, then $KERAS_BACKEND, then TensorFlow."""
    if configured is not None:
        return Backend(configured), "backend= in the config or on the command line"
    from_env = os.environ.get(ENV)
    if from_env:
        try:
            return Backend(from_env), f"${ENV}={from_env}"
        except ValueError:
            raise BackendError(
                f"${ENV}={from_env!r} is not a backend this project runs; choose from "
                f"{', '.join(b.value for b in Backend)} (unset it or pass backend=...)"
            ) from None
    return DEFAULT, f"the default (no backend= and no ${ENV})"


def activate(backend: Backend, hardware) -> None:
    """Make Keras use `backend` and set what that backend reads at import (GPU memory, visible devices).

    Must run before the first `import keras` in the process; a later call with another backend is refused.
    """
    package = PACKAGES[backend]
    if importlib.util.find_spec(package) is None:
        raise BackendError(f"backend={backend.value}, but {package} is not installed. Fix: {INSTALL[backend]}")
    if backend == Backend.jax:
        compilation_cache.enable(hardware.compilation_cache_dir)
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != backend.value:
            raise BackendError(
                f"backend={backend.value}, but Keras was already imported with {current} in this process "
                "(Keras picks its backend once). Fix: run each backend in its own process, e.g. a multirun over "
                "backend= with hydra/launcher=slurm, or separate commands."
            )
        return
    os.environ[ENV] = backend.value
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up lines, cuInit's "error" on CPUs
    if Accelerator(hardware.accelerator) == Accelerator.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # every backend: no GPU, even when the node has one
        if backend == Backend.jax:
            os.environ["JAX_PLATFORMS"] = "cpu"
    if backend == Backend.jax and hardware.memory_growth:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX's memory growth
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "Unable to initialize backend 'tpu'"


class _RefuseTensorflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (not imported on another backend)")
        return None


def set_random_seed(backend: Backend, seed: int) -> None:
    """keras.utils.set_random_seed without importing TensorFlow on another backend.

    Keras seeds TensorFlow whenever it is installed (5-10 s and 0.7 GB on a JAX or PyTorch run). With
    TensorFlow unimportable during the call, Keras records it as unavailable for the rest of the process.
    """
    import keras

    if backend == Backend.tensorflow or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    finder = _RefuseTensorflow()
    sys.meta_path.insert(0, finder)
    try:
        keras.utils.set_random_seed(seed)
    finally:
        sys.meta_path.remove(finder)


# TensorFlow's C++ prints these at import, before its log level (TF_CPP_MIN_LOG_LEVEL) applies, once per shared
# library that logs (twice in TF 2.21): informational, and noise in every run's log. Nothing else is hidden.
START_UP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|I\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] "
)


def import_keras(backend: Backend):
    """`import keras` (after `activate`), without TensorFlow's start-up lines: its C++ writes them to the
    process's stderr (fd 2) before any setting can silence them, so that fd is read during the import and
    everything but those lines is written back."""
    if backend != Backend.tensorflow or "keras" in sys.modules:
        import keras

        return keras
    with _stderr_filtered(START_UP_NOISE):
        import keras
    return keras


@contextlib.contextmanager
def _stderr_filtered(noise: re.Pattern):
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a daemon): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not noise.match(line):
                    sys.stderr.write(line)
            sys.stderr.flush()
