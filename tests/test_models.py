"""Model builders: output shapes, the lab's layer sizes, learning on one batch, refusals."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import compose
from src.training import models
from src.config import Kind
from src.data.datasets import InputSpec

SPECS = {"mnist": InputSpec(Kind.images, (28, 28), 10, 255.0), "imdb": InputSpec(Kind.sequences, (10000,), 2)}


def _sample(spec: InputSpec, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if spec.kind == Kind.images:
        return rng.integers(0, 256, (n, *spec.shape)).astype("uint8")
    return (rng.random((n, *spec.shape)) > 0.99).astype("float32")  # multi-hot rows


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_builds_with_the_expected_output(name):
    cfg = compose([f"model={name}"])
    spec = SPECS[cfg.dataset.name]
    model = models.build_model(cfg.model, spec)
    assert isinstance(model, keras.Model)
    assert model.output_shape == (None, 1 if spec.binary else spec.num_classes)


def test_lab_layer_sizes():
    mnist = models.build_model(compose([]).model, SPECS["mnist"])
    assert [layer.units for layer in mnist.layers if isinstance(layer, keras.layers.Dense)] == [512, 10]
    dropout = models.build_model(compose(["model=imdb_dropout"]).model, SPECS["imdb"])
    kinds = [type(layer).__name__ for layer in dropout.layers[1:]]
    assert kinds == ["Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert [layer.rate for layer in dropout.layers if isinstance(layer, keras.layers.Dropout)] == [0.5, 0.5]


def test_images_are_scaled_inside_the_model():
    model = models.build_model(compose([]).model, SPECS["mnist"])
    assert model.inputs[0].dtype == "uint8"
    rescale = next(layer for layer in model.layers if isinstance(layer, keras.layers.Rescaling))
    assert rescale.scale == pytest.approx(1 / 255)


def test_unknown_builder_is_refused_with_the_choices():
    cfg = compose([])
    cfg.model.name = "resnet"
    with pytest.raises(models.ConfigError, match="model.name='resnet' has no builder; choose from"):
        models.check(cfg.model, cfg.optimizer)


@pytest.mark.parametrize("optimizer", sorted(models.OPTIMIZERS))
def test_optimizers_take_the_configured_learning_rate(optimizer):
    opt = models.build_optimizer(compose([f"optimizer={optimizer}", "optimizer.learning_rate=0.0123"]).optimizer)
    assert float(opt.learning_rate) == pytest.approx(0.0123)


@pytest.mark.parametrize("name", ["mnist_dense", "imdb_dense"])
def test_overfits_one_batch(name):
    """A correctly wired model drives the loss on one fixed batch far below its start."""
    cfg = compose([f"model={name}", "optimizer=adam", "optimizer.learning_rate=0.003"])
    spec = SPECS[cfg.dataset.name]
    keras.utils.set_random_seed(0)
    x = _sample(spec, 32)
    y = (np.arange(32) % spec.num_classes).astype("float32" if spec.binary else "int32")
    model = models.build_model(cfg.model, spec)
    model.compile(optimizer=models.build_optimizer(cfg.optimizer), loss=spec.loss)
    start = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=60, batch_size=32, verbose=0)
    end = model.evaluate(x, y, verbose=0)
    assert end < 0.1 * start, (start, end)
