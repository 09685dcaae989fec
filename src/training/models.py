"""Plain keras.Model builders and optimizers, chosen by name from explicit dicts.

A builder takes the model's config and the dataset's `InputSpec` (kind, sample shape, classes) and
returns an uncompiled keras.Model. Which datasets a model takes is declared in its YAML (`accepts`,
`input_shape`) so that a mismatch is refused before Keras is imported.
"""

from __future__ import annotations

import keras
from keras import layers

from ..config import ConfigError
from .batches import sparse_inputs
from ..data.datasets import InputSpec


def mnist_dense(cfg, spec: InputSpec) -> keras.Model:
    """Flattened pixels -> `units` hidden Dense layers (Dropout at `rate`) -> softmax over the classes."""
    inputs, x = _inputs(spec)
    x = _hidden_stack(layers.Flatten()(x), cfg)
    return keras.Model(inputs, _classifier(x, spec), name=cfg.name)


def mnist_cnn(cfg, spec: InputSpec) -> keras.Model:
    """One Conv2D + MaxPool block per `filters` entry, optional Dense layers, Dropout, softmax classifier."""
    inputs, x = _inputs(spec)
    if len(spec.shape) == 2:  # grey images: one channel
        x = layers.Reshape((*spec.shape, 1))(x)
    for filters in cfg.filters:
        x = layers.Conv2D(filters, cfg.kernel_size, activation=cfg.activation)(x)
        x = layers.MaxPooling2D()(x)
    x = _hidden_stack(layers.Flatten()(x), cfg)
    if cfg.rate and not cfg.units:  # keras-io's convnet: dropout right before the classifier
        x = layers.Dropout(cfg.rate)(x)
    return keras.Model(inputs, _classifier(x, spec), name=cfg.name)


def imdb_dense(cfg, spec: InputSpec) -> keras.Model:
    """Multi-hot word vectors -> `units` hidden Dense layers (Dropout at `rate`) -> sigmoid (the lab's 16-16-1)."""
    inputs, x = _inputs(spec)
    x = _hidden_stack(x, cfg)
    return keras.Model(inputs, _classifier(x, spec), name=cfg.name)


MODELS = {
    "mnist_dense": mnist_dense,
    "mnist_cnn": mnist_cnn,
    "imdb_dense": imdb_dense,
    "imdb_dropout": imdb_dense,  # the same builder; its config sets rate
}


def check(model_cfg, optimizer_cfg) -> None:
    """Refuse a model or optimizer name without a builder, before any data is loaded."""
    for what, name, registry in (("model", model_cfg.name, MODELS), ("optimizer", optimizer_cfg.name, OPTIMIZERS)):
        if name not in registry:
            raise ConfigError(
                f"{what}.name={name!r} has no builder; choose from {sorted(registry)}, or add one to "
                f"{what.upper()}S in src/training/models.py (README: Adding a model)"
            )


def build_model(cfg, spec: InputSpec) -> keras.Model:
    if cfg.name not in MODELS:
        raise ValueError(f"unknown model {cfg.name!r}; choose from {sorted(MODELS)} (src/training/models.py, MODELS)")
    return MODELS[cfg.name](cfg, spec)


def _inputs(spec: InputSpec):
    """The model's input and, for images, the uint8 pixels scaled to [0, 1] inside the model (so the data
    stays uint8 in host memory, and the saved model takes raw images)."""
    if spec.scale:
        inputs = keras.Input(shape=spec.shape, dtype="uint8", name="pixels")
        return inputs, layers.Rescaling(1.0 / spec.scale)(inputs)
    # sparse on TensorFlow: the first Dense layer multiplies only the words present (src/training/batches.py)
    inputs = keras.Input(shape=spec.shape, sparse=sparse_inputs(), name="multi_hot")
    return inputs, inputs


def _hidden_stack(x, cfg):
    for units in cfg.units:
        regularizer = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
        x = layers.Dense(units, activation=cfg.activation, kernel_regularizer=regularizer)(x)
        if cfg.rate:
            x = layers.Dropout(cfg.rate)(x)
    return x


def _classifier(x, spec: InputSpec):
    # float32 output even under mixed precision: softmax/sigmoid in float16 loses the loss's precision
    if spec.binary:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name="output")(x)
    return layers.Dense(spec.num_classes, activation="softmax", dtype="float32", name="output")(x)


OPTIMIZERS = {
    "rmsprop": lambda cfg: keras.optimizers.RMSprop(learning_rate=cfg.learning_rate),
    "adam": lambda cfg: keras.optimizers.Adam(learning_rate=cfg.learning_rate),
    "sgd": lambda cfg: keras.optimizers.SGD(
        learning_rate=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov
    ),
}


def build_optimizer(cfg) -> keras.optimizers.Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.name](cfg)
