"""Security defaults: no secret reaches MLflow, models load in Keras safe mode, no foreign pickles,
servers bind 127.0.0.1."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest

import test_scripts
from conftest import ROOT
from src.data import datasets as data
from src.tracking import redaction, store
from test_faults import args, experiment, main, runs  # noqa: F401  (args, experiment: fixtures)

SECRETS = {
    "MLFLOW_TRACKING_PASSWORD": "hunter2-env-password",
    "LE5_API_TOKEN": "tok-from-hydra-env-set",
    "tracking.api_token": "tok-from-a-config-key",
}


@pytest.mark.trains  # src.train's main, in this process
def test_no_secret_reaches_mlflow_and_the_model_loads_in_safe_mode(args, experiment, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRETS["MLFLOW_TRACKING_PASSWORD"])
    # hydra.job.env_set puts an override verbatim into .hydra/hydra.yaml and the job's environment
    # and a config key the schema lets `+` add
    code, output = main(
        [*args, f"+hydra.job.env_set.LE5_API_TOKEN={SECRETS['LE5_API_TOKEN']}",
         f"+tracking.api_token={SECRETS['tracking.api_token']}"],
        capfd,
    )
    assert code == 0, output
    [run] = runs(experiment)
    assert run.info.status == "FINISHED"

    recorded = [run.info.run_name, *run.data.params, *run.data.params.values(), *run.data.tags, *run.data.tags.values()]
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "artifacts")))
    # the run's logged model (MLflow's Keras flavour) is stored apart from the run's artifacts
    logged = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/mnist_dense", dst_path=str(tmp_path / "m")))
    files = [p for p in [*folder.rglob("*"), *logged.rglob("*")] if p.is_file()]
    assert {"hydra/hydra.yaml", "hydra/overrides.yaml", "hydra/config.yaml", "config.yaml"} <= {
        str(p.relative_to(folder)) for p in files if p.is_relative_to(folder)
    }
    for name, secret in SECRETS.items():
        assert not any(secret in str(value) for value in recorded), name
        assert not any(secret.encode() in p.read_bytes() for p in files), name
    assert "LE5_API_TOKEN=***" in (folder / "hydra" / "hydra.yaml").read_text()  # scrubbed, not dropped
    assert "+tracking.api_token=***" in (folder / "hydra" / "overrides.yaml").read_text()
    assert "+tracking.api_token=***" in run.data.tags["overrides"]

    # the saved model loads with Keras safe mode (no Lambda layers, no arbitrary code)
    import keras

    model = keras.saving.load_model(logged / "data" / "model.keras", safe_mode=True)
    assert model.predict(np.zeros((2, 28, 28), np.float32), verbose=0).shape == (2, 10)


def test_redact_covers_overrides_and_url_passwords():
    assert redaction.redact("model=x,+db.password=p1,hydra.job.env_set.MY_KEY='a b'") == (
        "model=x,+db.password=***,hydra.job.env_set.MY_KEY=***"
    )
    assert redaction.redact("https://alice:s3cret@mlflow.example.org/") == "https://alice:***@mlflow.example.org/"
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"tracking": {"tracking_uri": "http://bob:pw@h:5000", "api_key": "k"}})
    assert redaction.params(cfg) == {
        "tracking.tracking_uri": "http://bob:***@h:5000"
    }


class _Gadget:
    """What a tampered data file could hold: unpickling it would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_npz_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    reviews = np.empty(2, dtype=object)
    reviews[0], reviews[1] = [1, 2, 3], _Gadget(marker)
    path = tmp_path / "imdb.npz"
    np.savez(path, x_train=reviews, y_train=np.zeros(2), x_test=reviews, y_test=np.zeros(2))
    with zipfile.ZipFile(path) as archive:  # the gadget really is in the file
        assert b"system" in archive.read("x_train.npy")
    with pytest.raises(data.DataError, match=r"refusing to unpickle posix\.system"):
        data.read_npz(path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # and it is the restricted unpickler that stops it
        data._read_npy(zipfile.ZipFile(path).read("x_train.npy"))
    assert not marker.exists()


def test_only_the_data_reader_unpickles():
    """`allow_pickle`/`pickle.load` appear nowhere but in src/data/datasets.py's restricted reader."""
    offenders = []
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text()
        if re.search(r"allow_pickle\s*=\s*True|pickle\.loads?\(|joblib\.load|torch\.load", text):
            offenders.append(path.name)
    assert offenders == []
    assert "allow_pickle=False" in (ROOT / "src" / "data" / "datasets.py").read_text()


def _server_commands():
    """Every `mlflow server`/`mlflow ui` command written in docs and Python, continuation lines joined.
    The shell scripts that start one are not read but executed (tests/test_scripts.py)."""
    places = [ROOT / "README.md", *(ROOT / d for d in ("src", "slurm", "conf", "scripts", "benchmarks", "docs"))]
    files = [p for place in places for p in ([place] if place.is_file() else sorted(place.rglob("*")))]
    for path in files:
        if path.suffix not in {".sh", ".sbatch", ".py", ".md", ".yaml"} or not path.is_file():
            continue
        text = re.sub(r"\\\n", " ", path.read_text(errors="replace"))
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(r"\bmlflow (server|ui)\b", line) and not line.lstrip().startswith("#"):
                yield path.relative_to(ROOT).as_posix(), number, line


def test_every_mlflow_server_or_ui_command_binds_localhost():
    commands = list(_server_commands())
    assert commands, "found no mlflow server/ui command to check"
    scripts = {where for where, _, _ in commands if where.endswith((".sh", ".sbatch"))}
    assert scripts <= set(test_scripts.SCRIPTS), f"add {scripts - set(test_scripts.SCRIPTS)} to tests/test_scripts.py"
    for where, number, line in commands:
        if where in test_scripts.SCRIPTS:
            continue  # executed with recording stand-ins: their real arguments are checked there
        assert "0.0.0.0" not in line, f"{where}:{number}"
        if "--host" in line:
            assert re.search(r"--host[ =]\S*127\.0\.0\.1", line), f"{where}:{number}: {line}"
    assert "--host 127.0.0.1" in store.ui_command("sqlite:///x.db")
