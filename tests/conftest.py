"""Fixtures: synthetic datasets in Keras's .npz format, a real SQLite MLflow store, Hydra composition.

Everything runs offline on a CPU. The synthetic files go through the same loading code as the
real ones; they are small and learnable (each class has its own pattern) so training visibly works.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def real_data_dir(environ=os.environ) -> Path:
    """Where the real-data tier finds Keras's files: $LE5_REAL_DATA_DIR, else the folder README's offline setup
    exports as $LE5_DATA_DIR (so that setup checks the lab's accuracies instead of skipping), else ../shared/data."""
    return Path(environ.get("LE5_REAL_DATA_DIR") or environ.get("LE5_DATA_DIR") or ROOT.parent / "shared" / "data")


REAL_DATA = real_data_dir()

# Small splits: validation_size must be overridden to fit them (see TINY).
MNIST_SIZES = {"train": 600, "test": 200}
IMDB_SIZES = {"train": 400, "test": 200}
TINY = ["dataset.validation_size=100", "trainer.batch_size=64"]


def write_mnist(path: Path, seed: int = 0) -> Path:
    """Digits as a class-specific bright 7x7 block on noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in MNIST_SIZES.items():
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(y):
            r, c = divmod(int(label), 5)
            x[i, 2 + 12 * r : 9 + 12 * r, 1 + 5 * c : 6 + 5 * c] = 255
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    np.savez(path, **arrays)
    return path


def write_imdb(path: Path, seed: int = 0) -> Path:
    """Reviews as ragged object arrays of word ranks (Keras's raw form); positive ones use words 1-49."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in IMDB_SIZES.items():
        y = rng.integers(0, 2, n).astype(np.int64)
        reviews = np.empty(n, dtype=object)
        for i, label in enumerate(y):
            common = rng.integers(100, 12000, rng.integers(20, 60)).tolist()  # some beyond num_words
            marker = rng.integers(1, 50, 5) if label else rng.integers(50, 99, 5)
            reviews[i] = common + marker.tolist()
        arrays[f"x_{split}"], arrays[f"y_{split}"] = reviews, y
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_mnist(folder / "mnist.npz")
    write_imdb(folder / "imdb.npz")
    return folder


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> str:
    """A real SQLite MLflow store shared by the session (a copy of one migrated once: see sqlite_store)."""
    from sqlite_store import empty_store

    return empty_store(tmp_path_factory.mktemp("mlruns"))


@pytest.fixture(autouse=True)
def _tracking_uri_restored():
    """Where a test points MLflow (mlflow.set_tracking_uri, which also exports MLFLOW_TRACKING_URI) is undone after
    it: no test sees the store of one that ran before it, whatever the order."""
    import mlflow

    uri, exported = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    if exported is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = exported


@pytest.fixture
def experiment(store, request) -> str:
    """A fresh experiment name per test, so each test sees only its own runs."""
    return re.sub(r"[^\w.-]+", "-", f"test-{request.node.name}")[:200]  # [param] ids break Hydra's grammar


@pytest.fixture
def conf(tmp_path) -> Path:
    """A copy of conf/ in tmp_path, to add YAML files to as a user adds them to a clone (compose(conf_dir=...))."""
    folder = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", folder)
    return folder


def base_overrides(data_dir: Path, store: str, experiment: str) -> list[str]:
    return [
        f"data_dir={data_dir}",
        f"tracking.tracking_uri={store}",
        f"tracking.experiment_name={experiment}",
        "dataset.download=false",
        "dataset.sha256=null",  # the synthetic files are not Keras's
        "hardware=cpu",
        "trainer.epochs=1",
        *TINY,
    ]


def compose(overrides: list[str], output_dir: Path | None = None, conf_dir: Path | None = None):
    """Compose conf/ (or `conf_dir`) like `python -m src.train` does and make it the current HydraConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from src import config

    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir or ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def train_composed(cfg):
    """`train.train` as `python -m src.train` calls it, for a config made by `compose` (its HydraConfig)."""
    from hydra.core.hydra_config import HydraConfig

    from src import train
    from src.training.job import Job

    hc = HydraConfig.get()
    job = Job(choices=dict(hc.runtime.choices), overrides=list(hc.overrides.task))
    return train.train(cfg, Path(hc.runtime.output_dir), job)


@pytest.fixture
def train_run(data_dir, store, experiment, tmp_path):
    """Train in this process, as the CLI would; returns (objective, the finished MLflow run)."""
    import mlflow

    def run(*overrides: str):
        cfg = compose([*base_overrides(data_dir, store, experiment), *overrides], output_dir=tmp_path)
        objective = train_composed(cfg)
        runs = mlflow.search_runs(experiment_names=[experiment], output_format="list", order_by=["start_time DESC"])
        return objective, runs[0]

    return run


def child_env(env: dict | None = None) -> dict[str, str]:
    """The environment a user's shell would give a child: this process's, minus the MLFLOW_* and LE5_*
    variables that fixtures set as side effects (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI),
    so a child that ignores its own tracking.tracking_uri is caught; `env` adds variables back explicitly."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LE5_"))}
    if clean.get("MUTANT_UNDER_TEST") == "stats":  # mutmut records coverage in its own process only
        del clean["MUTANT_UNDER_TEST"]
    return {**clean, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}


def run_cli(args: list[str], env: dict | None = None, timeout: int = 300, cwd: Path = ROOT):
    """`python -m src.train ARGS` in a subprocess with `child_env(env)`; returns the CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-m", "src.train", *args],
        cwd=cwd,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")  # the backend of the tests that train in this process


def pytest_configure(config):
    # Two CPU devices, so multi-device training can be tested without GPUs. Must happen before the
    # backend initialises its runtime, i.e. before any test touches a tensor.
    if BACKEND == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    elif BACKEND == "jax":
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    # Keras (and absl's logging with it) first imported inside a captured test would bind its log handler to
    # pytest's capture stream, which is closed after that test ("I/O operation on closed file"): import it now.
    import keras  # noqa: F401


def pytest_collection_modifyitems(config, items):
    # A test that asks for a trained run trains, whether or not its author marked it (mutmut leaves it out).
    for item in items:
        if "train_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.trains)
