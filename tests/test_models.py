"""Model builders: output shapes, the lab's layer sizes, learning on one batch, mixed precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import compose
from src import models

SHAPES = {"mnist": ((28, 28), 10), "imdb": ((10000,), 1)}


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_builds_with_the_expected_output(name):
    cfg = compose([f"model={name}"])
    input_shape, classes = SHAPES[cfg.dataset.name]
    model = models.build_model(cfg.model, input_shape, classes)
    assert isinstance(model, keras.Model)
    assert model.output_shape == (None, classes)


def test_lab_layer_sizes():
    mnist = models.build_model(compose([]).model, (28, 28), 10)
    assert [layer.units for layer in mnist.layers if isinstance(layer, keras.layers.Dense)] == [512, 10]
    dropout = models.build_model(compose(["model=imdb_dropout"]).model, (10000,), 1)
    kinds = [type(layer).__name__ for layer in dropout.layers[1:]]
    assert kinds == ["Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert [layer.rate for layer in dropout.layers if isinstance(layer, keras.layers.Dropout)] == [0.5, 0.5]


def test_unknown_model_lists_choices():
    cfg = compose([]).model
    cfg.name = "resnet"
    with pytest.raises(ValueError, match="unknown model 'resnet'; choose from"):
        models.build_model(cfg, (28, 28), 10)


@pytest.mark.parametrize("optimizer", sorted(models.OPTIMIZERS))
def test_optimizers_take_the_configured_learning_rate(optimizer):
    opt = models.build_optimizer(compose([f"optimizer={optimizer}", "optimizer.learning_rate=0.0123"]).optimizer)
    assert float(opt.learning_rate) == pytest.approx(0.0123)


@pytest.mark.parametrize("name", ["mnist_dense", "imdb_dense"])
def test_overfits_one_batch(name):
    """A correctly wired model drives the loss on one fixed batch far below its start."""
    cfg = compose([f"model={name}", "optimizer=adam", "optimizer.learning_rate=0.01"])
    input_shape, classes = SHAPES[cfg.dataset.name]
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((32, *input_shape)).astype("float32")
    y = np.arange(32) % max(classes, 2)
    model = models.build_model(cfg.model, input_shape, classes)
    if cfg.dataset.name == "imdb":
        x = tf.sparse.from_dense((x > 0.99).astype("float32"))  # the sparse multi-hot input it is built for
    loss = "binary_crossentropy" if classes == 1 else "sparse_categorical_crossentropy"
    model.compile(optimizer=models.build_optimizer(cfg.optimizer), loss=loss)
    start = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=60, batch_size=32, verbose=0)
    end = model.evaluate(x, y, verbose=0)
    assert end < 0.1 * start, (start, end)
