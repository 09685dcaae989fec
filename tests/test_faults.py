"""The fault matrix (issue 6): every way a run can go wrong, with its message, exit code and MLflow state.

For each case: one message that names the cause and the fix, a non-zero exit, and the MLflow
state asserted: no run when the failure comes before training, else FAILED or KILLED with the
reason in the `failure_reason` tag and the metrics logged so far kept; never RUNNING.

Most cases call the real Hydra entry point (`src.train.main`) in this process, which is exactly
what `python -m src.train ARGS` runs, minus the ~8 s TensorFlow start; a few run the real
command in a subprocess where the process boundary itself is under test (exit code of a Hydra
composition error, a signal from outside).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, base_overrides, compose, write_mnist, train_composed
from mlflow_server import MlflowServer, free_port
from src.data import datasets as data
from src.tracking import outbox
from src import preflight, train
from src.tracking.runs import wait_for_metrics

# ---------------------------------------------------------------------------------------------
# helpers


def main(args: list[str], capfd) -> tuple[int, str]:
    """`python -m src.train ARGS` in this process: (exit code, stdout + stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    argv = sys.argv
    sys.argv = [str(ROOT / "src" / "train.py"), *args]
    # as under `python -m src.train` (module __main__), Hydra finds conf/ relative to src/train.py
    os.environ["HYDRA_MAIN_MODULE"] = "__main__"
    try:
        train.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = argv
        del os.environ["HYDRA_MAIN_MODULE"]
        GlobalHydra.instance().clear()
    out, err = capfd.readouterr()
    return code, out + err


def runs(experiment: str) -> list:
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    return MlflowClient().search_runs([found.experiment_id])


def history(run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


@pytest.fixture
def experiment(store, request) -> str:
    """conftest's fresh experiment per test, named so that it is a plain Hydra override value."""
    return re.sub(r"[^\w.-]", "-", f"test-{request.node.name}")[:200]


@pytest.fixture
def args(data_dir, store, experiment, tmp_path) -> list[str]:
    """The base command line: synthetic data, the test's store and experiment, its own output folder."""
    return [*base_overrides(data_dir, store, experiment), f"hydra.run.dir={tmp_path / 'run'}"]


def assert_refused_before_training(code: int, output: str, experiment: str, *fragments: str, exit_code: int = 2):
    assert code == exit_code, output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output}"
    assert "Data: " not in output and "Epoch 1/" not in output  # stopped before loading data / training
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) <= 25  # one screen
    assert runs(experiment) == []  # no MLflow run


# ---------------------------------------------------------------------------------------------
# 1-5: configuration


def test_01_misspelled_key_is_refused_at_composition_naming_it(args, experiment, tmp_path, capfd):
    # (tests/test_train_cli.py checks the same refusal through a real `python -m src.train` process)
    code, output = main([*args, "trainer.epocs=3"], capfd)
    assert_refused_before_training(
        code, output, experiment, "Could not override 'trainer.epocs'", "Key 'epocs' not in 'TrainerConfig'",
        "full_key: trainer.epocs", exit_code=1,
    )
    assert not (tmp_path / "run").exists()  # refused before Hydra made an output folder


def test_02_wrong_type_is_refused_at_composition(args, experiment, capfd):
    code, output = main([*args, "trainer.epochs=abc"], capfd)
    assert_refused_before_training(
        code, output, experiment, "Value 'abc' of type 'str' could not be converted to Integer", "full_key: trainer.epochs",
        exit_code=1,
    )


def test_03_out_of_range_values_are_all_refused_before_data_loading(args, experiment, tmp_path, capfd):
    # data_dir points nowhere: had the data been loaded first, this would be a DataError instead
    code, output = main(
        [*args, f"data_dir={tmp_path / 'nowhere'}", "optimizer.learning_rate=0", "trainer.batch_size=0",
         "model.rate=1.0", "trainer.epochs=0"],
        capfd,
    )
    assert_refused_before_training(
        code, output, experiment, "invalid configuration", "optimizer.learning_rate=0.0: must be > 0",
        "trainer.batch_size=0: must be >= 1", "model.rate=1.0: a dropout rate must be in [0, 1)",
        "trainer.epochs=0: must be >= 1",
    )
    assert mlflow.get_experiment_by_name(experiment) is None  # not even the experiment: refused before connecting


def test_04_unknown_group_option_lists_the_available_ones(args, experiment, capfd):
    code, output = main([*args, "model=resnet"], capfd)
    assert_refused_before_training(
        code, output, experiment, "Could not find 'model/resnet'", "imdb_dense", "imdb_dropout", "mnist_cnn",
        "mnist_dense", exit_code=1,
    )


def test_05_model_dataset_mismatch_is_refused(args, experiment, capfd):
    code, output = main([*args, "model=imdb_dense", "dataset=mnist"], capfd)
    assert_refused_before_training(
        code, output, experiment, "model=imdb_dense takes sequences, but dataset=mnist gives images",
        "drop the dataset= override", "choose a dataset for imdb_dense: imdb", "a model for mnist: mnist_cnn, mnist_dense",
    )


# ---------------------------------------------------------------------------------------------
# 6-7: data


def test_06_missing_data_names_the_folder_and_the_download_command(args, experiment, tmp_path, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = main([*args, f"data_dir={empty}"], capfd)
    assert_refused_before_training(
        code, output, experiment, f"mnist.npz is not in the data directory {empty}", "dataset.download=false",
        f"python -m src.data download --dataset mnist --data-dir {empty}", "export LE5_DATA_DIR=",
    )


def test_06_failed_download_says_why_and_what_to_do(tmp_path, monkeypatch):
    # an offline node: the download is tried, and fails at once (nothing listens on this port)
    cfg = compose([f"dataset.url=http://127.0.0.1:{free_port()}/mnist.npz"]).dataset
    with pytest.raises(data.DataError) as err:
        data.locate(cfg, tmp_path)
    message = str(err.value)
    assert "the download failed" in message
    assert f"python -m src.data download --dataset mnist --data-dir {tmp_path}" in message
    assert not list(tmp_path.iterdir())  # no partial file left under the real name


@pytest.mark.parametrize("damage", ["truncated", "not a zip"])
def test_07_corrupt_npz_names_the_file_and_suggests_downloading_again(args, experiment, tmp_path, damage, capfd):
    folder = tmp_path / "data"
    folder.mkdir()
    good = write_mnist(tmp_path / "good.npz").read_bytes()
    broken = good[: len(good) // 2] if damage == "truncated" else b"<html>proxy login page</html>"
    (folder / "mnist.npz").write_bytes(broken)
    code, output = main([*args, f"data_dir={folder}"], capfd)
    assert_refused_before_training(
        code, output, experiment, f"{folder / 'mnist.npz'} is corrupt or truncated",
        f"delete it and fetch it again: python -m src.data download --dataset mnist --data-dir {folder}",
    )


# ---------------------------------------------------------------------------------------------
# 8-9: failures during training


@pytest.mark.trains  # src.train's main, in this process
def test_08_nan_loss_stops_at_once_and_fails_the_run(args, experiment, capfd):
    code, output = main([*args, "optimizer=sgd", "optimizer.learning_rate=1e30", "trainer.epochs=20"], capfd)
    assert code == 2, output
    assert "Invalid loss, terminating training" in output  # TerminateOnNaN, mid-epoch
    [run] = runs(experiment)
    assert run.info.status == "FAILED"
    reason = run.data.tags["failure_reason"]
    epoch = int(reason.split("loss became NaN at epoch ")[1].split(":")[0])
    assert epoch < 20  # stopped at once, not after 20 epochs
    assert reason.startswith("Diverged: loss became NaN at epoch")
    assert "lower optimizer.learning_rate" in reason and "lower optimizer.learning_rate" in output
    assert history(run.info.run_id, "loss") == list(range(1, epoch + 1))  # every epoch so far, the NaN one too


class SignalAt(__import__("keras").callbacks.Callback):
    """Sends this process `signum` in the middle of epoch `epoch` (0-based), as scancel or Ctrl-C would.

    With `swallow`, the exception that the signal raises is caught here, as a framework's data iterator can
    catch it (Keras's JAX trainer did, and the run went on to FINISHED).
    """

    def __init__(self, signum: int, epoch: int = 1, batch: int = 2, swallow: bool = False):
        super().__init__()
        self.signum, self.epoch, self.batch, self.swallow, self.current = signum, epoch, batch, swallow, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            try:
                os.kill(os.getpid(), self.signum)
            except KeyboardInterrupt:
                if not self.swallow:
                    raise


@pytest.mark.trains  # src.train's main, in this process
@pytest.mark.parametrize("swallow", [False, True], ids=["raised", "swallowed"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_09_signal_mid_epoch_kills_the_run_keeping_metrics_and_checkpoint(
    args, experiment, tmp_path, signum, swallow, monkeypatch, capfd
):
    real = train._callbacks
    monkeypatch.setattr(train, "_callbacks", lambda *a: [*real(*a), SignalAt(signum, epoch=1, batch=2, swallow=swallow)])
    code, output = main([*args, "trainer.epochs=5"], capfd)
    assert code == 130, output
    assert "Interrupted: any MLflow run was ended KILLED, keeping the metrics logged so far." in output
    [run] = runs(experiment)
    assert run.info.status == "KILLED"
    expected = "Terminated: SIGTERM (signal 15)" if signum == signal.SIGTERM else "KeyboardInterrupt"
    assert run.data.tags["failure_reason"].startswith(expected)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history(run.info.run_id, key) == [1]  # epoch 1 completed and kept; epoch 2 was cut

    # the last completed epoch's checkpoint (src/training/resume.py's backup) is kept, for this run
    state = json.loads((tmp_path / "run" / "backup" / "state.json").read_text())
    assert len(state["epochs"]) == 1 and state["run_id"] == run.info.run_id
    assert (tmp_path / "run" / "backup" / state["weights"]).is_file()


def test_09_sigterm_from_outside_ends_the_process_and_the_run(data_dir, store, experiment, tmp_path):
    """scancel / SLURM's time limit: a real SIGTERM to a real `python -m src.train` while it trains."""
    command = [sys.executable, "-m", "src.train", *base_overrides(data_dir, store, experiment),
               "trainer.epochs=100000", f"hydra.run.dir={tmp_path}"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            found = runs(experiment)
            if found and len(history(found[0].info.run_id, "loss")) >= 2:
                break
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, output
    assert "ended KILLED: Terminated: SIGTERM (signal 15)" in output
    [run] = runs(experiment)
    assert run.info.status == "KILLED"
    steps = history(run.info.run_id, "loss")
    assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1))  # every completed epoch kept
    state = json.loads((tmp_path / "backup" / "state.json").read_text())
    # the backup commits an epoch just before MLflow hears of it: the signal may fall in between
    assert len(steps) <= len(state["epochs"]) <= len(steps) + 1 and state["run_id"] == run.info.run_id


# ---------------------------------------------------------------------------------------------
# 10-11: the tracking store


def test_10_unreachable_tracking_store_fails_before_training(args, experiment, capfd):
    server_down = f"http://127.0.0.1:{free_port()}"
    base = [a for a in args if not a.startswith("tracking.tracking_uri=")]
    code, output = main([*base, f"tracking.tracking_uri={server_down}"], capfd)
    assert_refused_before_training(
        code, output, experiment, f"the MLflow server at {server_down} does not answer", "Connection refused",
        "Fix: start it (bash slurm/mlflow_server.sh)",
    )
    code, output = main([*base, "tracking.tracking_uri=htp://localhost:5000"], capfd)
    assert_refused_before_training(
        code, output, experiment, "tracking.tracking_uri='htp://localhost:5000' is not a tracking store URI",
        "Fix: use http://127.0.0.1:5000",
    )


class KillServerAfter(__import__("keras").callbacks.Callback):
    def __init__(self, server: MlflowServer, epoch: int):
        super().__init__()
        self.server, self.epoch = server, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            wait_for_metrics()  # MLflowMetrics sends in the background: let this epoch arrive first
            self.server.kill()


def test_11_server_lost_mid_run_training_finishes_and_nothing_is_dropped(
    data_dir, experiment, tmp_path, monkeypatch, caplog
):
    server = MlflowServer(tmp_path / "server").start()
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)  # the project's short defaults (src.store.HTTP_DEFAULTS) apply
    real = train._callbacks
    monkeypatch.setattr(train, "_callbacks", lambda *a: [*real(*a), KillServerAfter(server, epoch=0)])
    output_dir = tmp_path / "run"
    try:
        overrides = [a for a in base_overrides(data_dir, "x", experiment) if not a.startswith("tracking.tracking_uri")]
        cfg = compose([*overrides, f"tracking.tracking_uri={server.uri}", "trainer.epochs=3"], output_dir=output_dir)
        started = time.monotonic()
        objective = train_composed(cfg)  # returns: training finished although the server died after epoch 1
        print(f"training with the server lost after epoch 1 took {time.monotonic() - started:.1f} s")
        assert np.isfinite(objective)

        pending = output_dir / outbox.FILENAME
        records = [json.loads(line) for line in pending.read_text().splitlines()]
        ops = [r["op"] for r in records]
        assert ops == ["metrics", "metrics", "metrics", "artifacts", "artifacts", "end"]  # epochs 2, 3, test, files, model, end
        assert [r["metrics"][0][3] for r in records[:2]] == [2, 3]
        assert records[-1]["status"] == "FINISHED"
        assert f"python -m src.outbox import {pending}" in caplog.text

        server.start()  # back, on the same store and port
        result = subprocess.run([sys.executable, "-m", "src.tracking.outbox", "import", str(pending)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "imported 6 records" in result.stdout
        assert not pending.exists()

        client = MlflowClient(server.uri)
        [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert run.info.status == "FINISHED"
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2, 3]
        assert {"test_loss", "test_accuracy"} <= set(run.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"mnist_dense", "plots", "config.yaml", "predictions.csv"} <= artifacts  # no .hydra in-process
        mlflow.set_tracking_uri(server.uri)
        assert mlflow.keras.load_model(f"runs:/{run.info.run_id}/mnist_dense").output_shape == (None, 10)  # the kept model
    finally:
        server.kill()
        mlflow.set_tracking_uri("sqlite:///" + str(tmp_path / "unused.db"))  # later tests set their own


class RestartServerAfter(__import__("keras").callbacks.Callback):
    def __init__(self, server: MlflowServer, epoch: int):
        super().__init__()
        self.server, self.epoch = server, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            wait_for_metrics()  # this epoch is kept in the outbox before the server is back
            self.server.start()


def test_11_server_back_mid_run_gets_the_backlog_by_itself(data_dir, experiment, tmp_path, monkeypatch):
    """Down for epoch 2 only: epoch 2 is kept, then sent with epoch 3 once the server answers; no file is left."""
    server = MlflowServer(tmp_path / "server").start()
    real = train._callbacks
    monkeypatch.setattr(
        train, "_callbacks",
        lambda *a: [*real(*a), KillServerAfter(server, epoch=0), RestartServerAfter(server, epoch=1)],
    )
    output_dir = tmp_path / "run"
    try:
        overrides = [a for a in base_overrides(data_dir, "x", experiment) if not a.startswith("tracking.tracking_uri")]
        cfg = compose([*overrides, f"tracking.tracking_uri={server.uri}", "trainer.epochs=3"], output_dir=output_dir)
        train_composed(cfg)
        assert not (output_dir / outbox.FILENAME).exists()
        client = MlflowClient(server.uri)
        [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert run.info.status == "FINISHED"
        for key in ("loss", "val_loss", "epoch_time_s"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2, 3]
    finally:
        server.kill()
        mlflow.set_tracking_uri("sqlite:///" + str(tmp_path / "unused.db"))


# ---------------------------------------------------------------------------------------------
# 12: output folders that cannot be written


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]).returncode == 0


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    if not _mount_tmpfs(folder, "ro,size=1m"):
        folder.chmod(0o555)  # not root: permissions stop us (they would not stop root)
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True)
    folder.chmod(0o755)


@pytest.fixture
def full_folder(tmp_path):
    folder = tmp_path / "full"
    if not _mount_tmpfs(folder, "size=1m"):
        pytest.skip("a full file system needs a tmpfs mount (root)")
    subprocess.run(["dd", "if=/dev/zero", f"of={folder / 'filler'}", "bs=64k"], capture_output=True)  # until ENOSPC
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.parametrize("state", ["read_only_folder", "full_folder"])
def test_12_unwritable_output_and_store_folders_fail_at_start(args, experiment, state, request, capfd):
    folder = request.getfixturevalue(state)
    cause = "Read-only file system" if os.geteuid() == 0 or state == "full_folder" else "Permission denied"
    if state == "full_folder":
        cause = "No space left on device"

    # the Hydra output folder: checked by a Hydra callback before Hydra creates it
    others = [a for a in args if not a.startswith("hydra.run.dir=")]
    code, output = main([*others, f"hydra.run.dir={folder / 'outputs' / 'run'}"], capfd)
    assert_refused_before_training(
        code, output, experiment, f"Error: cannot write the output folder {folder / 'outputs' / 'run'} ({cause})",
        "Fix: free space or fix the permissions there, or write elsewhere: hydra.run.dir=",
    )

    # the SQLite store's folder: checked when connecting, before any data is loaded
    store = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    others = [a for a in args if not a.startswith("tracking.tracking_uri=")]
    code, output = main([*others, f"tracking.tracking_uri={store}"], capfd)
    assert_refused_before_training(
        code, output, experiment, f"cannot write the tracking store's folder {folder / 'mlruns'} ({cause})",
        "set tracking.tracking_uri / MLFLOW_TRACKING_URI to a writable place",
    )


def test_12_nearly_full_folder_is_refused(tmp_path, monkeypatch):
    # the probe write fits, but not a model: the free-space floor refuses it
    folder = tmp_path / "small"
    if not _mount_tmpfs(folder, f"size={preflight.MIN_FREE_BYTES // 2}"):
        pytest.skip("needs a tmpfs mount (root)")
    try:
        with pytest.raises(preflight.FolderError, match=r"is \(nearly\) full: 50 MiB free, 100 MiB needed"):
            preflight.check_folder(folder, "output folder", preflight.OUTPUT_FIX)
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


# ---------------------------------------------------------------------------------------------
# 13: hardware


def test_13_gpu_required_but_absent(args, experiment, capfd):
    from conftest import BACKEND
    from src.training import hardware
    from src.config import Backend

    if hardware.gpus(Backend(BACKEND)):
        pytest.skip("a GPU is visible")
    code, output = main([*args, "hardware=gpu"], capfd)
    assert_refused_before_training(
        code, output, experiment, f"hardware=gpu, but {BACKEND} sees no GPU", "Refusing to train on the CPU instead",
        "sbatch --gres=gpu:1", "choose hardware=auto or hardware=cpu",
    )


# 14: overrides through slurm/*.sbatch reach python unchanged: tests/test_scripts.py runs the scripts themselves.
