"""Plain keras.Model builders and optimizers, chosen by name from explicit dicts."""

from __future__ import annotations

import keras
from keras import layers


def mnist_dense(cfg, input_shape: tuple, num_classes: int) -> keras.Model:
    """The lab's net: Dense 512 relu -> Dense 10 softmax on flattened pixels."""
    inputs = keras.Input(shape=input_shape)
    x = layers.Flatten()(inputs)
    x = _hidden_stack(x, cfg)
    return keras.Model(inputs, _classifier(x, num_classes), name=cfg.name)


def mnist_cnn(cfg, input_shape: tuple, num_classes: int) -> keras.Model:
    """Conv2D + MaxPool blocks, then Dropout and a softmax classifier."""
    inputs = keras.Input(shape=input_shape)
    x = layers.Reshape((*input_shape, 1))(inputs)
    for filters in cfg.filters:
        x = layers.Conv2D(filters, cfg.kernel_size, activation=cfg.activation)(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = _hidden_stack(x, cfg)
    if cfg.rate and not cfg.units:  # keras-io's convnet: dropout right before the classifier
        x = layers.Dropout(cfg.rate)(x)
    return keras.Model(inputs, _classifier(x, num_classes), name=cfg.name)


def imdb_dense(cfg, input_shape: tuple, num_classes: int) -> keras.Model:
    """The lab's nets: Dense 16 relu -> Dense 16 relu -> Dense 1 sigmoid (Dropout if model.rate > 0).

    The input is a sparse multi-hot batch: the first Dense layer multiplies only the words present.
    """
    inputs = keras.Input(shape=input_shape, sparse=True)
    x = _hidden_stack(inputs, cfg)
    return keras.Model(inputs, _classifier(x, num_classes), name=cfg.name)


MODELS = {
    "mnist_dense": mnist_dense,
    "mnist_cnn": mnist_cnn,
    "imdb_dense": imdb_dense,
    "imdb_dropout": imdb_dense,  # the same builder; its config sets rate
}


def build_model(cfg, input_shape: tuple, num_classes: int) -> keras.Model:
    if cfg.name not in MODELS:
        raise ValueError(f"unknown model {cfg.name!r}; choose from {sorted(MODELS)}")
    return MODELS[cfg.name](cfg, input_shape, num_classes)


def _hidden_stack(x, cfg):
    for units in cfg.units:
        regularizer = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
        x = layers.Dense(units, activation=cfg.activation, kernel_regularizer=regularizer)(x)
        if cfg.rate:
            x = layers.Dropout(cfg.rate)(x)
    return x


def _classifier(x, num_classes: int):
    # float32 output even under mixed precision: softmax/sigmoid in float16 loses the loss's precision
    if num_classes == 1:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name="output")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="output")(x)


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
