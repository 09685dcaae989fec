"""Hardware options' code paths on a CPU: the GPU guard, MirroredStrategy, mixed precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import compose
from src import hardware, models


# On a GPU machine the no-GPU paths cannot run: skip them there instead of failing.
no_gpu = pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="a GPU is visible")


@pytest.fixture(autouse=True)
def _float32_policy_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


@no_gpu
@pytest.mark.parametrize("option", ["gpu", "multi_gpu"])
def test_gpu_guard_refuses_to_start_without_a_gpu(option):
    with pytest.raises(hardware.HardwareError, match="sees no GPU") as err:
        hardware.setup(compose([f"hardware={option}"]).hardware)
    assert "hardware=auto or hardware=cpu" in str(err.value)


@no_gpu
def test_auto_says_it_trains_on_cpu():
    strategy, device = hardware.setup(compose(["hardware=auto"]).hardware)
    assert device.startswith("CPU (no GPU visible)")


def test_mirrored_strategy_over_two_logical_cpus_trains():
    cfg = compose(["hardware=multi_gpu", "hardware.accelerator=auto", "hardware.devices=[/cpu:0,/cpu:1]"])
    strategy, device = hardware.setup(cfg.hardware)
    assert strategy.num_replicas_in_sync == 2 and device.startswith("2 replicas")
    with strategy.scope():
        model = models.build_model(cfg.model, (28, 28), 10)
        model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((64, 28, 28)).astype("float32")
    y = np.arange(64) % 10
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()


@pytest.mark.parametrize("name,shape,classes", [("mnist_dense", (28, 28), 10), ("imdb_dense", (10000,), 1)])
def test_mixed_precision_keeps_the_output_layer_float32(name, shape, classes):
    cfg = compose([f"model={name}", "hardware=cpu", "hardware.mixed_precision=true"])
    _, device = hardware.setup(cfg.hardware)
    assert keras.mixed_precision.global_policy().name == "mixed_float16" and "mixed_float16" in device
    model = models.build_model(cfg.model, shape, classes)
    hidden = model.layers[-2] if name == "mnist_dense" else model.get_layer(index=1)
    assert hidden.compute_dtype == "float16"
    assert model.get_layer("output").compute_dtype == "float32"
    assert model.output.dtype == "float32"


def test_policy_is_reset_for_the_next_run():
    hardware.setup(compose(["hardware=cpu", "hardware.mixed_precision=true"]).hardware)
    hardware.setup(compose(["hardware=cpu"]).hardware)
    assert keras.mixed_precision.global_policy().name == "float32"
