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


# --- Tiers (docs/testing.md): tests are marked by what they do, here, not by hand -------------------------------
# `pytest` runs the default tier (`not slow`); `pytest -m slow` the slow tiers; `pytest --tier all` every tier
# (.ci/run). An explicit `-m EXPR` alone decides what runs (mutmut's selection, `-m realdata`, ...).

# One end-to-end test per entry point and per launcher stays in the default tier although it starts processes.
# Each entry must name a collected test (a renamed one fails collection, so the list cannot silently empty).
E2E = (
    "tests/test_train_cli.py::test_imdb_dropout_from_the_command_line",                 # python -m src.train
    "tests/test_train_cli.py::test_local_multirun_makes_one_finished_run_per_point",    # basic launcher
    "tests/test_not_a_store.py::test_compare_refuses_it",                               # python -m src.compare
    "tests/test_not_a_store.py::test_doctor_marks_it_unusable",                         # python -m src.doctor
    "tests/test_outbox.py::test_importing_the_same_file_twice_adds_nothing_twice[subprocess]",  # outbox import
    "tests/test_data.py::test_missing_file_names_the_directory_and_both_fixes",         # python -m src.data
    "tests/test_isolation.py::test_multirun_puts_parent_and_children_in_the_configured_store",  # submitit_local
    "tests/test_fused.py::test_a_fused_sweep_records_each_point_as_its_own_run_and_resumes",     # fused launcher
    "tests/test_search.py::test_a_killed_study_resumes_to_n_trials_in_its_sweep_folder",  # optuna sweeper
)

# What a test's code (its function, the fixtures it uses, and the module helpers they call) does.
_DOES = {
    "processes": re.compile(r"\bsubprocess\.|\bPopen\b|\brun_cli\(|\bcli_runs\.|\[\s*sys\.executable\b"  # an argv that starts this interpreter
                            r"|\bfrom cli_runs import [^\n]*\b(run|start)\b"),  # imported in the test function
    "trains": re.compile(r"\btrain_composed\(|\btrain\.train\(|\.fit\(|\btrain_run\b|\bfused_epoch|compiled\.fit"),
    "server": re.compile(r"\b(MlflowServer|AuthServer)\("),  # tests/mlflow_server.py: a real `mlflow server`
}
_SLOW_MARKS = ("realdata", "slurm", "stress", "server")


def _code_of(item) -> str:
    """The source a test runs: its function, its fixtures' functions, and (two levels deep) the functions of
    its module, conftest or cli_runs that those name."""
    import inspect

    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info else ()):
        functions += [d.func for d in defs]
    seen, texts = set(), []
    for depth in range(3):
        found = []
        for f in functions:
            f = inspect.unwrap(f) if callable(f) else f
            if f is None or id(f) in seen or not inspect.isfunction(f) or f.__name__.startswith("_"):  # autouse ones
                continue
            seen.add(id(f))
            try:
                text = inspect.getsource(f)
            except (OSError, TypeError):
                continue
            texts.append(text)
            scope = f.__globals__
            for name in set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", text)) | set(re.findall(r"\b(\w+)\.\w+\(", text)):
                target = scope.get(name)
                if inspect.isfunction(target) and Path(inspect.getsourcefile(target) or "").parent == ROOT / "tests":
                    found.append(target)
                elif inspect.ismodule(target) and Path(getattr(target, "__file__", "") or "").parent == ROOT / "tests":
                    texts.append(inspect.getsource(target))  # cli_runs.start(...), sweep helpers
        functions = found
    return "\n".join(texts)


def pytest_addoption(parser):
    parser.addoption("--tier", choices=["default", "slow", "all"], default=None,
                     help="default: the tests that are not `slow` (what plain `pytest` runs); slow: the slow tiers; "
                          "all: every tier (.ci/run). Without it, an explicit -m alone decides.")


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection, which then sees these marks
def pytest_collection_modifyitems(config, items):
    ids = {item.nodeid for item in items}
    missing = [e for e in E2E if e not in ids]
    full = not config.args or config.args == ["tests"] or all(str(a).rstrip("/") in ("tests", str(ROOT / "tests")) for a in config.args)
    if missing and full and not config.option.keyword:
        raise pytest.UsageError(f"conftest.E2E names tests that were not collected: {missing}")
    for item in items:
        code = _code_of(item)
        for mark, pattern in _DOES.items():
            if pattern.search(code) and mark not in item.keywords:
                item.add_marker(getattr(pytest.mark, mark))
        if "train_run" in getattr(item, "fixturenames", ()) and "trains" not in item.keywords:
            item.add_marker(pytest.mark.trains)  # mutmut's selection leaves it out
        if re.search(r"backend=(jax|torch)|KERAS_BACKEND\W+(jax|torch)", code) and "processes" in item.keywords:
            item.add_marker(pytest.mark.backends)  # another backend's process: minutes of imports on 2 cores
        slow = any(m in item.keywords for m in _SLOW_MARKS) or (
            "processes" in item.keywords and item.nodeid not in E2E)
        if slow:
            item.add_marker(pytest.mark.slow)
        if "slurm" in item.keywords or "stress" in item.keywords:
            # under pytest-xdist (--dist loadgroup) one worker runs these one after another: a one-node cluster's
            # jobs and sixteen training processes never share the 2 cores with each other
            item.add_marker(pytest.mark.xdist_group("cluster_and_stress"))
    tier = config.getoption("tier") or (None if config.option.markexpr else "default")
    if tier in ("default", "slow"):
        keep, drop = [], []
        for item in items:
            ((drop if ("slow" in item.keywords) == (tier == "default") else keep)).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep


_STARTED: list[str] = []


@pytest.fixture(autouse=True)
def _processes_are_marked(request, monkeypatch):
    """Checks the static marking above at run time: a test that starts a Python process without the `processes`
    mark is listed at the end of the session (so it can be taught to _DOES)."""
    if "processes" in request.node.keywords:
        yield
        return
    original = subprocess.Popen.__init__

    def init(self, args, *a, **k):
        argv = [args] if isinstance(args, (str, bytes)) else list(args)
        if argv and str(argv[0]) == sys.executable:
            _STARTED.append(request.node.nodeid)
        return original(self, args, *a, **k)

    monkeypatch.setattr(subprocess.Popen, "__init__", init)
    yield


_TRAINED: list[str] = []


@pytest.fixture(autouse=True)
def _training_is_marked(request, monkeypatch):
    """The same check for the `trains` mark: a test that trains a Keras model in this process (fit, train_on_batch,
    the compiled loop) without it is listed at the end of the session. Only where Keras is imported already: the
    check must not import it itself."""
    if "trains" in request.node.keywords or "keras" not in sys.modules:
        yield
        return
    import keras

    targets = [(keras.Model, "fit"), (keras.Model, "train_on_batch")]
    if "src.training.compiled" in sys.modules:
        targets.append((sys.modules["src.training.compiled"].Epochs, "train_epoch"))
    for owner, name in targets:
        original = getattr(owner, name)

        def wrapped(self, *a, _original=original, **k):
            if request.node.nodeid not in _TRAINED:
                _TRAINED.append(request.node.nodeid)
            return _original(self, *a, **k)

        monkeypatch.setattr(owner, name, wrapped)
    yield


def pytest_terminal_summary(terminalreporter):
    if _TRAINED:
        terminalreporter.write_line("tests that trained a model without the `trains` mark (conftest._DOES):")
        for nodeid in _TRAINED:
            terminalreporter.write_line(f"  {nodeid}")
    if _STARTED:
        terminalreporter.write_line("tests that started a Python process without the `processes` mark (conftest._DOES):")
        for nodeid in sorted(set(_STARTED)):
            terminalreporter.write_line(f"  {nodeid}")


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and session.config.getoption("tier"):
        session.exitstatus = pytest.ExitCode.OK  # a tier with nothing in it here (e.g. a backend pass) is no failure
