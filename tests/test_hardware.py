"""Hardware options' code paths on a CPU: the GPU guard, multi-device training, mixed precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import BACKEND, compose
from src.training import hardware, models
from src.config import Backend

from test_models import SPECS

THIS = Backend(BACKEND)


@pytest.fixture(autouse=True)
def _float32_policy_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")
    if THIS == Backend.jax:
        keras.distribution.set_distribution(None)


needs_no_gpu = pytest.mark.skipif(bool(hardware.gpus(THIS)), reason="this machine has a GPU")


@needs_no_gpu
@pytest.mark.parametrize("option", ["gpu", "multi_gpu"])
def test_gpu_guard_refuses_to_start_without_a_gpu(option):
    with pytest.raises(hardware.HardwareError, match="sees no GPU") as err:
        hardware.setup(compose([f"hardware={option}"]).hardware, THIS)
    assert "hardware=auto or hardware=cpu" in str(err.value)
    assert hardware.GPU_INSTALL[THIS] in str(err.value)  # the backend's own CUDA install


@needs_no_gpu
def test_auto_says_it_trains_on_cpu():
    _, device = hardware.setup(compose(["hardware=auto"]).hardware, THIS)
    assert device.startswith("CPU (no GPU visible)")


@pytest.mark.skipif(THIS == Backend.torch, reason="no multi-device distribution on PyTorch")
def test_data_parallel_over_two_cpu_devices_trains():
    devices = "[/cpu:0,/cpu:1]" if THIS == Backend.tensorflow else "[cpu:0,cpu:1]"
    cfg = compose(["hardware=multi_gpu", "hardware.accelerator=auto", f"hardware.devices={devices}"])
    scope, device = hardware.setup(cfg.hardware, THIS)
    assert device.startswith("2 ")
    with scope:
        model = models.build_model(cfg.model, SPECS["mnist"])
        model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).integers(0, 256, (64, 28, 28)).astype("uint8")
    y = np.arange(64) % 10
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()


def test_torch_refuses_data_parallel():
    cfg = compose(["hardware=multi_gpu", "hardware.accelerator=auto"])
    with pytest.raises(hardware.HardwareError, match="not available on backend=torch"):
        hardware._data_parallel(cfg.hardware, Backend.torch, [])


@pytest.mark.parametrize("name", ["mnist_dense", "imdb_dense"])
def test_mixed_precision_keeps_the_output_layer_float32(name):
    cfg = compose([f"model={name}", "hardware=cpu", "hardware.mixed_precision=true"])
    _, device = hardware.setup(cfg.hardware, THIS)
    assert keras.mixed_precision.global_policy().name == "mixed_float16" and "mixed_float16" in device
    model = models.build_model(cfg.model, SPECS[cfg.dataset.name])
    hidden = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    assert hidden.compute_dtype == "float16"
    assert model.get_layer("output").compute_dtype == "float32"
    assert model.output.dtype == "float32"


def test_policy_is_reset_for_the_next_run():
    hardware.setup(compose(["hardware=cpu", "hardware.mixed_precision=true"]).hardware, THIS)
    hardware.setup(compose(["hardware=cpu"]).hardware, THIS)
    assert keras.mixed_precision.global_policy().name == "float32"
