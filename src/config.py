"""Schemas for conf/, registered in Hydra's ConfigStore, and the checks that run right after composition.

Every YAML file in conf/ is merged onto these dataclasses, so a misspelled key (`trainer.epocs=3`) or a
wrong type (`trainer.epochs=abc`) fails at composition. Value ranges and pairings that a type cannot
express are checked by `validate`. Both happen before Keras or any backend is imported: this module
imports neither, nor MLflow, so a refusal takes well under two seconds.

Each default lives here, once; a YAML file sets only what differs for its option.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import UserError
from .paths import PROJECT_ROOT

CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(UserError, ValueError):
    """A configuration value is out of range or inconsistent; the message names the fix."""


class Backend(Enum):
    tensorflow = "tensorflow"
    jax = "jax"
    torch = "torch"


class Kind(Enum):
    images = "images"  # x: uint8 arrays (N, height, width[, channels]); y: class indices
    sequences = "sequences"  # x: one list of word indices per sample (Keras's imdb/reuters layout); y: class indices


class Accelerator(Enum):
    auto = "auto"  # GPU when the backend sees one, else CPU
    cpu = "cpu"
    gpu = "gpu"  # refuse to start without a GPU


class Strategy(Enum):
    default = "default"  # one device
    mirrored = "mirrored"  # every visible GPU: tf.distribute.MirroredStrategy, keras.distribution.DataParallel on JAX


class Loop(Enum):
    auto = "auto"  # compiled on JAX with a GPU/TPU and data within the budget, else fit
    fit = "fit"  # keras.Model.fit
    compiled = "compiled"  # JAX: one compiled lax.scan per epoch over device-resident data (src/training/compiled.py)


@dataclass
class DatasetConfig:
    name: str = MISSING  # must equal the option's file name (conf/dataset/<name>.yaml)
    kind: Kind = MISSING
    file: str = MISSING  # in the data directory
    format: str = "npz"  # a loader in src/data/datasets.py's LOADERS; "npz" = Keras's x_train, y_train, x_test, y_test
    sha256: Optional[str] = None  # the file's known digest; a different file is refused
    url: Optional[str] = None  # where `python -m src.data download` fetches it; None: no download
    download: bool = True  # fetch it when missing (needs internet: false on offline compute nodes)
    num_classes: int = MISSING  # 2: one sigmoid output (binary), else a softmax over the classes
    # The first `validation_size` training samples are held out for validation (the lab's IMDB split).
    validation_size: int = MISSING
    shape: Optional[List[int]] = None  # images: (height, width) or (height, width, channels)
    scale: float = 255.0  # images: pixels are divided by this inside the model (a Rescaling layer)
    num_words: Optional[int] = None  # sequences: keep the most frequent words; the multi-hot width
    num_bins: int = 0  # sequences: hashed bigram columns after the words (keras.layers.Hashing's num_bins)
    # sequences: keras.datasets.imdb.load_data's conventions, which define the lab's split
    shuffle_seed: Optional[int] = None  # shuffle train and test with this seed first (IMDB: 113)
    start_char: int = 1
    oov_char: int = 2
    index_from: int = 3


@dataclass
class ModelConfig:
    name: str = MISSING  # must equal the option's file name and a builder in src/training/models.py's MODELS
    accepts: Kind = MISSING  # the dataset kind this model takes
    input_shape: Optional[List[int]] = None  # the dataset shape it needs; None: any shape of that kind
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
    # The backend's own setting: TensorFlow memory growth; JAX no preallocation; PyTorch grows anyway.
    memory_growth: bool = True
    mixed_precision: bool = False  # Keras's mixed_float16 policy: float16 compute, float32 variables and output
    jit_compile: Optional[bool] = None  # the backend's compiler (XLA; torch.compile); None: Keras's "auto"
    steps_per_execution: int = 1  # train steps per compiled call (model.compile); >1 cuts per-step overhead
    # trainer.loop=compiled: at most this fraction of the device's free memory holds the data; above it,
    # batches are streamed in chunks (the lab's out-of-memory error stays impossible)
    device_data_budget: float = 0.5
    # JAX's persistent compilation cache (src/training/compilation_cache.py): "auto" = $XDG_CACHE_HOME/le5/jax (else
    # ~/.cache/le5/jax), a folder (a shared one on a cluster), or null: off. Other backends ignore it.
    compilation_cache_dir: Optional[str] = "auto"


@dataclass
class TrainerConfig:
    epochs: int = 5
    batch_size: int = 128
    # Early stopping on `monitor` restoring the best weights; None = train all epochs.
    early_stopping_patience: Optional[int] = None
    monitor: str = "val_loss"  # also the value returned to Hydra sweepers
    verbose: int = 2  # Keras fit verbosity: 2 = one line per epoch (readable in SLURM logs)
    loop: Loop = Loop.auto
    # Checkpoint of the last finished epoch (src/training/resume.py). None: <project>/checkpoints/<cluster>-<job id>
    # in a SLURM job (found again after a requeue), else <output dir>/backup. Point a new local run at
    # an interrupted run's backup folder to resume it.
    backup_dir: Optional[str] = None


@dataclass
class TrackingConfig:
    # None: $MLFLOW_TRACKING_URI if set, else sqlite:///<project>/mlruns/mlflow.db
    tracking_uri: Optional[str] = None
    experiment_name: Optional[str] = None  # None: the dataset's name (mnist, imdb, ...)
    log_model: bool = True
    system_metrics: bool = True  # MLflow's CPU/memory (and GPU) metrics, sampled every system_metrics_interval s
    system_metrics_interval: float = 10.0


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    backend: Optional[Backend] = None  # None: $KERAS_BACKEND if set, else tensorflow
    seed: int = 42
    data_dir: Optional[str] = None  # None: $LE5_DATA_DIR if set, else <project>/data


@dataclass
class OptunaSweeperConfig:
    """hydra/sweeper=optuna (conf/hydra/sweeper/optuna.yaml, src/sweeps/search.py); direction follows trainer.monitor."""

    _target_: str = "hydra_plugins.le5_optuna.sweeper.OptunaSweeper"
    n_trials: int = 20  # trials that finish (complete or pruned), counting those of an earlier run in the folder
    n_jobs: int = 1  # trials in flight at once (the basic launcher runs one at a time)
    sampler: str = "tpe"  # a key of src/sweeps/search.py's SAMPLERS: tpe, random
    seed: Optional[int] = None  # the sampler's seed; None: the config's seed
    pruner: str = "median"  # a key of src/sweeps/search.py's PRUNERS: median, successive_halving (ASHA), none
    # The pruners' arguments, as Optuna names them. median: no pruning before n_startup_trials trials finished,
    # nor before epoch n_warmup_steps + 1 of a trial
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    # successive_halving: the first rung after min_resource epochs, then every reduction_factor times more
    min_resource: int = 1
    reduction_factor: int = 3
    params: Dict[str, str] = field(default_factory=dict)  # the search space: {key: interval(...), choice(...), ...}


def register() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)
    ConfigStore.instance().store(group="hydra/sweeper", name="optuna_schema", node=OptunaSweeperConfig)


def lower_is_better(monitor: str) -> bool:
    """The direction of a monitored metric: losses go down, accuracies up."""
    return monitor.endswith("loss")


def best(values, monitor: str, key=None):
    """The best of `values` for `monitor`: the minimum for a loss, the maximum otherwise."""
    return (min if lower_is_better(monitor) else max)(values, key=key)


def objective(values, monitor: str) -> float | None:
    """A run's objective: the best finite value of `monitor` over its epochs (None: no epoch has one). The one
    definition of "best" that src.train returns to sweepers, logs as names.objective(monitor), and that the
    sweep summary and compare rank runs by."""
    finite = [float(v) for v in values if math.isfinite(v)]
    return best(finite, monitor) if finite else None


def unquoted_non_ascii(argv: list[str]) -> str | None:
    """The problem with the first override that has a non-ASCII character outside quotes, else None.

    Hydra's override grammar takes such characters only in quoted values; unquoted, it fails with
    a bare "LexerNoViableAltException" that does not say so.
    """
    flag_values = {"-cp", "-cn", "-cd", "--config-path", "--config-name", "--config-dir"}
    for before, arg in zip([None, *argv], argv):
        if arg.startswith("-") or before in flag_values:  # --multirun, -cn NAME, ...: not overrides
            continue
        if not re.sub(r"'[^']*'|\"[^\"]*\"", "", arg).isascii():
            key, _, value = arg.partition("=")
            return (
                f"{arg}: Hydra reads non-ASCII characters only inside quotes.\n"
                f"Fix: quote the value for Hydra, and the whole override for the shell: '{key}=\"{value}\"'"
            )
    return None


def experiment_name(cfg) -> str:
    """tracking.experiment_name, else the dataset's name: MNIST and IMDB curves never share a chart."""
    return cfg.tracking.experiment_name or cfg.dataset.name


def options(group: str, conf_dir: Path = CONF_DIR) -> dict[str, dict]:
    """The options of a config group as found in conf/: {option: its YAML as a plain dict}."""
    found = {}
    for path in sorted((conf_dir / group).glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        found[path.stem] = node.get(group, node) if isinstance(node, dict) else {}  # @package _global_ files nest
    return found


def _accepts(model: dict, dataset: dict) -> bool:
    if model.get("accepts") != dataset.get("kind"):
        return False
    shape = model.get("input_shape")
    return shape is None or list(shape) == list(dataset.get("shape") or [])


def validate(cfg: DictConfig | Any, choices: dict | None = None) -> None:
    """Refuse values the schema's types allow but training cannot use; list every problem at once.

    `choices` (Hydra's group choices) lets it check that each YAML's `name` matches its option.
    """
    problems = _non_finite(cfg)
    t, o, m, d, h = cfg.trainer, cfg.optimizer, cfg.model, cfg.dataset, cfg.hardware
    for key, value, minimum in [
        ("trainer.epochs", t.epochs, 1),
        ("trainer.batch_size", t.batch_size, 1),
        ("dataset.validation_size", d.validation_size, 1),
        ("dataset.num_classes", d.num_classes, 2),
        ("hardware.steps_per_execution", h.steps_per_execution, 1),
    ]:
        if value < minimum:
            problems.append(f"{key}={value}: must be >= {minimum}")
    if not 0 <= cfg.seed < 2**32:  # numpy's and every backend's seed range; past it numpy fails mid-run
        problems.append(f"seed={cfg.seed}: must be in [0, 2**32)")
    if t.early_stopping_patience is not None and t.early_stopping_patience < 0:
        problems.append(f"trainer.early_stopping_patience={t.early_stopping_patience}: must be >= 0 (or null)")
    if not re.fullmatch(r"(val_)?(loss|accuracy)", t.monitor):
        problems.append(f"trainer.monitor={t.monitor!r}: choose from val_loss, val_accuracy, loss, accuracy")
    if not o.learning_rate > 0:
        problems.append(f"optimizer.learning_rate={o.learning_rate}: must be > 0")
    if not 0 <= o.momentum < 1:
        problems.append(f"optimizer.momentum={o.momentum}: must be in [0, 1)")
    if not 0 <= m.rate < 1:
        problems.append(f"model.rate={m.rate}: a dropout rate must be in [0, 1)")
    if m.l2 < 0:
        problems.append(f"model.l2={m.l2}: an L2 penalty must be >= 0")
    if any(u < 1 for u in m.units):
        problems.append(f"model.units={list(m.units)}: every layer needs >= 1 unit")
    if not 0 < h.device_data_budget <= 1:
        problems.append(f"hardware.device_data_budget={h.device_data_budget}: a fraction in (0, 1]")
    if Kind(d.kind) == Kind.sequences:
        if d.num_words is None or d.num_words < 4:
            problems.append(f"dataset.num_words={d.num_words}: must be >= 4 (indices 0-3 are reserved)")
        if d.num_bins < 0:
            problems.append(f"dataset.num_bins={d.num_bins}: must be >= 0 (0 = no bigram columns)")
    elif not d.shape or len(d.shape) not in (2, 3) or any(s < 1 for s in d.shape):
        problems.append(f"dataset.shape={d.shape}: images need [height, width] or [height, width, channels]")
    if Strategy(h.strategy) == Strategy.mirrored and Accelerator(h.accelerator) == Accelerator.cpu:
        problems.append("hardware.strategy=mirrored with hardware.accelerator=cpu: use hardware=multi_gpu or hardware=cpu")
    if cfg.tracking.system_metrics_interval <= 0:
        problems.append(f"tracking.system_metrics_interval={cfg.tracking.system_metrics_interval}: must be > 0 seconds")

    for group, name in (("model", m.name), ("dataset", d.name)):
        chosen = (choices or {}).get(group)
        if chosen and chosen != name:
            problems.append(
                f"conf/{group}/{chosen}.yaml says {group}.name={name!r}: a {group}'s name must equal its file's "
                f"name (MLflow tags the run {group}={chosen}). Fix: set name: {chosen} in that file."
            )
    problems += _pairing(m, d)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def check_fits(cfg, train_size: int) -> None:
    """Refuse a batch larger than the training split (known once the data is loaded): it would silently train
    one step per epoch."""
    if cfg.trainer.batch_size > train_size:
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} is larger than the training split ({train_size} samples): "
            f"every epoch would be a single step.\nFix: trainer.batch_size <= {train_size} (the lab used 128 for "
            f"MNIST, 512 for IMDB)."
        )


def _non_finite(cfg) -> list[str]:
    """Every float that is nan or infinite (`optimizer.learning_rate=inf` would start a run that cannot train)."""
    found = []

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, float) and not math.isfinite(value):
                found.append(f"{prefix}{key}={value}: must be a finite number")

    for key in cfg:
        if key == "hydra":  # Hydra's own node holds interpolations only a running job can resolve
            continue
        node = cfg[key]
        if isinstance(node, DictConfig):
            walk({key: OmegaConf.to_container(node, resolve=True)}, "")
        elif isinstance(node, float) and not math.isfinite(node):
            found.append(f"{key}={node}: must be a finite number")
    return found


def _pairing(model: DictConfig, dataset: DictConfig) -> list[str]:
    """A model that cannot take the dataset's input, with the options that fit either way."""
    # plain values, as in the YAML files that options() reads (an Enum becomes its name)
    m = OmegaConf.to_container(model, enum_to_str=True)
    d = OmegaConf.to_container(dataset, enum_to_str=True)
    if _accepts(m, d):
        return []
    needs = f"{m['accepts']}" + (f" of shape {list(m['input_shape'])}" if m.get("input_shape") else "")
    gives = f"{d['kind']}" + (f" of shape {list(d['shape'])}" if d.get("shape") else "")
    models = [name for name, yaml in options("model").items() if _accepts(yaml, d)]
    datasets = [name for name, yaml in options("dataset").items() if _accepts(m, yaml)]
    return [
        f"model={m['name']} takes {needs}, but dataset={d['name']} gives {gives}.\n"
        f"    Fix: drop the dataset= override (each model selects its dataset), choose a dataset for "
        f"{m['name']}: {', '.join(datasets) or '(none in conf/dataset: add one, README: Adding a dataset)'},\n"
        f"    or a model for {d['name']}: {', '.join(models) or '(none in conf/model: add one, README: Adding a model)'}"
    ]
