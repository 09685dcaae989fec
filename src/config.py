"""Schemas for conf/, registered in Hydra's ConfigStore.

Every YAML file in conf/ is merged onto these dataclasses, so a misspelled key
(`trainer.epocs=3`) or a wrong type (`trainer.epochs=abc`) fails at composition,
before TensorFlow is even imported. Value ranges that a type cannot express are
checked by `validate`, also before any data is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent; the message names the fix."""


class Accelerator(Enum):
    auto = "auto"  # GPU when one is visible, else CPU
    cpu = "cpu"
    gpu = "gpu"  # refuse to start without a visible GPU


class Strategy(Enum):
    default = "default"  # one device
    mirrored = "mirrored"  # tf.distribute.MirroredStrategy over `devices` (all visible GPUs by default)


@dataclass
class DatasetConfig:
    name: str = MISSING
    # The first `validation_size` training samples are held out for validation (the lab's IMDB split).
    validation_size: int = MISSING
    num_words: Optional[int] = None  # IMDB: keep the most frequent words; multi-hot dimension
    num_bins: int = 0  # IMDB: hashed bigram columns after the words (keras.layers.Hashing's num_bins); 0 = words only
    download: bool = True  # fetch through Keras when the file is missing; false on offline nodes


@dataclass
class ModelConfig:
    name: str = MISSING
    units: List[int] = field(default_factory=list)  # hidden Dense layers
    activation: str = "relu"
    rate: float = 0.0  # Dropout after each hidden Dense layer; 0 = no Dropout layer
    l2: float = 0.0  # keras.regularizers.L2(l2) on each hidden Dense layer's kernel; 0 = none
    filters: List[int] = field(default_factory=list)  # Conv2D blocks (mnist_cnn)
    kernel_size: int = 3


@dataclass
class OptimizerConfig:
    name: str = MISSING
    learning_rate: float = MISSING
    momentum: float = 0.0  # sgd only
    nesterov: bool = False  # sgd only


@dataclass
class HardwareConfig:
    name: str = MISSING
    accelerator: Accelerator = Accelerator.auto
    strategy: Strategy = Strategy.default
    devices: Optional[List[str]] = None  # for strategy=mirrored; None = every visible GPU
    memory_growth: bool = True  # allocate GPU memory as needed, not all of it at start
    mixed_precision: bool = False  # float16 compute, float32 variables and output layer
    jit_compile: bool = False  # XLA; ignored for sparse (IMDB) inputs, which XLA cannot compile
    steps_per_execution: int = 1  # train steps per compiled call (model.compile); >1 cuts per-step overhead
    num_parallel_calls: Optional[int] = None  # tf.data batch-building threads; None = AUTOTUNE
    prefetch_buffer_size: Optional[int] = None  # batches prepared ahead of the device; None = AUTOTUNE


@dataclass
class TrainerConfig:
    epochs: int = 5
    batch_size: int = 128
    # Early stopping on `monitor` restoring the best weights; None = train all epochs.
    early_stopping_patience: Optional[int] = None
    monitor: str = "val_loss"  # also the value returned to Hydra sweepers
    verbose: int = 2  # Keras fit verbosity: 2 = one line per epoch (readable in SLURM logs)
    # Checkpoint of the last finished epoch (src/resume.py). None: <project>/checkpoints/<cluster>-<job id>
    # in a SLURM job (found again after a requeue), else <output dir>/backup. Point a new local run at
    # an interrupted run's backup folder to resume it.
    backup_dir: Optional[str] = None


@dataclass
class TrackingConfig:
    # None: $MLFLOW_TRACKING_URI if set, else sqlite:///<project>/mlruns/mlflow.db
    tracking_uri: Optional[str] = None
    experiment_name: str = "le5"
    log_model: bool = True


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 42
    # None: $LE5_DATA_DIR if set, else <project>/data
    data_dir: Optional[str] = None


def register() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


# Which dataset each model was built for; `validate` refuses other pairings.
MODEL_DATASET = {
    "mnist_dense": "mnist",
    "mnist_cnn": "mnist",
    "imdb_dense": "imdb",
    "imdb_dropout": "imdb",
}


def validate(cfg: DictConfig | Any) -> None:
    """Refuse values the schema's types allow but training cannot use."""
    problems = []
    if cfg.trainer.epochs < 1:
        problems.append(f"trainer.epochs={cfg.trainer.epochs}: must be >= 1")
    if cfg.trainer.batch_size < 1:
        problems.append(f"trainer.batch_size={cfg.trainer.batch_size}: must be >= 1")
    patience = cfg.trainer.early_stopping_patience
    if patience is not None and patience < 0:
        problems.append(f"trainer.early_stopping_patience={patience}: must be >= 0 (or null)")
    if not re.fullmatch(r"(val_)?(loss|accuracy)", cfg.trainer.monitor):
        problems.append(f"trainer.monitor={cfg.trainer.monitor!r}: choose from val_loss, val_accuracy, loss, accuracy")
    if not cfg.optimizer.learning_rate > 0:
        problems.append(f"optimizer.learning_rate={cfg.optimizer.learning_rate}: must be > 0")
    if not 0 <= cfg.optimizer.momentum < 1:
        problems.append(f"optimizer.momentum={cfg.optimizer.momentum}: must be in [0, 1)")
    if not 0 <= cfg.model.rate < 1:
        problems.append(f"model.rate={cfg.model.rate}: a dropout rate must be in [0, 1)")
    if cfg.model.l2 < 0:
        problems.append(f"model.l2={cfg.model.l2}: an L2 penalty must be >= 0")
    if any(u < 1 for u in cfg.model.units):
        problems.append(f"model.units={list(cfg.model.units)}: every layer needs >= 1 unit")
    if cfg.dataset.validation_size < 1:
        problems.append(f"dataset.validation_size={cfg.dataset.validation_size}: must be >= 1")
    if cfg.dataset.num_words is not None and cfg.dataset.num_words < 4:
        problems.append(f"dataset.num_words={cfg.dataset.num_words}: must be >= 4 (indices 0-3 are reserved)")
    if cfg.dataset.num_bins < 0:
        problems.append(f"dataset.num_bins={cfg.dataset.num_bins}: must be >= 0 (0 = no bigram columns)")
    if cfg.hardware.steps_per_execution < 1:
        problems.append(f"hardware.steps_per_execution={cfg.hardware.steps_per_execution}: must be >= 1")
    for key in ("num_parallel_calls", "prefetch_buffer_size"):
        value = cfg.hardware[key]
        if value is not None and value < 1:
            problems.append(f"hardware.{key}={value}: must be >= 1, or null for AUTOTUNE")
    if cfg.hardware.strategy == Strategy.mirrored and cfg.hardware.accelerator == Accelerator.cpu:
        problems.append("hardware.strategy=mirrored with hardware.accelerator=cpu: use hardware=multi_gpu or hardware=cpu")

    expected = MODEL_DATASET.get(cfg.model.name)
    if expected is None:
        problems.append(f"model.name={cfg.model.name!r} is unknown; choose from {sorted(MODEL_DATASET)}")
    elif expected != cfg.dataset.name:
        problems.append(
            f"model={cfg.model.name} is built for dataset={expected}, not dataset={cfg.dataset.name}; "
            f"drop the dataset override (the model selects its dataset) or pick a {cfg.dataset.name} model: "
            f"{sorted(m for m, d in MODEL_DATASET.items() if d == cfg.dataset.name)}"
        )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
