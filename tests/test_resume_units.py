"""Which backup a run gets and whether it may resume it (src/training/resume.py: backup_dir, fingerprint, for_run).

No training: the folder a run's backup lives in (local, named, a SLURM job or array task, a sweep's job), the
fingerprint that a backup must match to be resumed, and for_run, which puts the two together. Training and
resuming for real: tests/test_resume.py and tests/test_resume_cli.py.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose
from src.training import resume

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CLUSTER_NAME")


@pytest.fixture
def slurm(monkeypatch, tmp_path):
    """No SLURM variables, and CHECKPOINTS in tmp_path; returns a function that sets SLURM variables."""
    for var in SLURM_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(resume, "CHECKPOINTS", tmp_path / "checkpoints")

    def setenv(**env):
        for var, value in env.items():
            monkeypatch.setenv(var, value)

    return setenv


# backup_dir ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env,job_num,name",
    [
        ({"SLURM_JOB_ID": "41", "SLURM_CLUSTER_NAME": "hpc"}, None, "hpc-41"),
        ({"SLURM_JOB_ID": "41"}, None, "slurm-41"),  # a cluster without a name
        ({"SLURM_JOB_ID": "41", "SLURM_CLUSTER_NAME": "hpc"}, 0, "hpc-41-0"),  # a sweep's first job
        ({"SLURM_JOB_ID": "41", "SLURM_CLUSTER_NAME": "hpc"}, 3, "hpc-41-3"),
        # an array task: keyed on the array job and task, which a requeue keeps (its SLURM_JOB_ID differs)
        ({"SLURM_JOB_ID": "44", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3", "SLURM_CLUSTER_NAME": "hpc"},
         None, "hpc-40_3"),
        ({"SLURM_JOB_ID": "44", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"}, 2, "slurm-40_3-2"),
        # half an array's variables: the job id alone
        ({"SLURM_JOB_ID": "44", "SLURM_ARRAY_JOB_ID": "40"}, None, "slurm-44"),
        ({"SLURM_JOB_ID": "44", "SLURM_ARRAY_TASK_ID": "3"}, None, "slurm-44"),
    ],
)
def test_a_slurm_jobs_backup_is_keyed_on_the_job_not_on_the_output_folder(slurm, tmp_path, env, job_num, name):
    """A requeued job gets a new Hydra output folder but finds the same backup."""
    slurm(**env)
    first = resume.backup_dir(None, tmp_path / "first", job_num)
    assert first == tmp_path / "checkpoints" / name
    assert resume.backup_dir(None, tmp_path / "requeued", job_num) == first


@pytest.mark.parametrize("job_num", [None, 0, 5])
def test_a_local_runs_backup_is_in_its_output_folder(slurm, tmp_path, job_num):
    assert resume.backup_dir(None, tmp_path / "out", job_num) == tmp_path / "out" / "backup"
    slurm(SLURM_JOB_ID="")  # set but empty: not a SLURM job
    assert resume.backup_dir(None, tmp_path / "out", job_num) == tmp_path / "out" / "backup"


def test_a_named_backup_dir_wins_and_is_made_absolute(slurm, tmp_path, monkeypatch):
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    assert resume.backup_dir(str(tmp_path / "mine"), tmp_path / "out") == tmp_path / "mine"
    assert resume.backup_dir("~/b", tmp_path / "out") == tmp_path / "home" / "b"
    assert resume.backup_dir("rel/b", tmp_path / "out") == tmp_path / "cwd" / "rel" / "b"
    slurm(SLURM_JOB_ID="41")
    assert resume.backup_dir("~/b", tmp_path / "out", 3) == tmp_path / "home" / "b"  # also in a SLURM job


# fingerprint --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base():
    return resume.fingerprint(compose([]), "tensorflow", "sha")


@pytest.mark.parametrize(
    "override",
    [
        "trainer.backup_dir=/elsewhere",  # where things are written or logged
        "tracking.tracking_uri=sqlite:///x.db",
        "tracking.experiment_name=e",
        "data_dir=/elsewhere",
        "trainer.verbose=0",  # how much is printed
        "trainer.epochs=9",  # a run may be extended
        "trainer.early_stopping_patience=2",
        "hardware=gpu",  # a requeue may land on another GPU
        # where the data file comes from, not what it holds (its sha256 is in the fingerprint)
        "dataset.download=false",
        "dataset.url=https://mirror.example.org/mnist.npz",
        "dataset.file=mnist-copy.npz",
        "dataset.sha256=null",
    ],
)
def test_the_fingerprint_ignores_what_does_not_change_the_training(base, override):
    assert resume.fingerprint(compose([override]), "tensorflow", "sha") == base


@pytest.mark.parametrize(
    "override",
    [
        "optimizer.learning_rate=0.01",
        "optimizer=adam",
        "seed=1",
        "trainer.batch_size=64",
        "model.units=[64]",
        "model=mnist_cnn",
        "dataset.validation_size=100",
        "hardware.mixed_precision=true",
    ],
)
def test_the_fingerprint_changes_with_what_changes_the_training(base, override):
    assert resume.fingerprint(compose([override]), "tensorflow", "sha") != base


def test_the_fingerprint_changes_with_the_backend_and_the_datas_content(base):
    cfg = compose([])
    assert resume.fingerprint(cfg, "tensorflow", "sha") == base
    assert resume.fingerprint(cfg, "jax", "sha") != base
    assert resume.fingerprint(cfg, "tensorflow", "other data") != base


def test_the_fingerprint_takes_interpolated_values_resolved():
    """An interpolation into a key outside the fingerprint still changes it when its value does."""
    momentum = "optimizer.momentum=${trainer.epochs}"
    assert resume.fingerprint(compose([momentum]), "jax", "sha") != resume.fingerprint(
        compose([momentum, "trainer.epochs=9"]), "jax", "sha"
    )


def minimal(**top):
    """The keys the fingerprint reads, in the given order at the top and in `dataset`."""
    parts = {
        "dataset": {"name": "d", "file": "d.npz", "validation_size": 10, "url": "u", "sha256": "s", "download": True},
        "model": {"name": "m", "units": [8]},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "seed": 0,
        "trainer": {"batch_size": 32, "epochs": 2},
        "hardware": {"mixed_precision": False},
    }
    return OmegaConf.create({key: top.get(key, parts[key]) for key in top or parts})


def test_the_fingerprint_does_not_depend_on_the_order_of_keys():
    """Reordering a YAML file must not make a requeued job start afresh."""
    reordered = minimal(
        trainer={"epochs": 2, "batch_size": 32},
        hardware={"mixed_precision": False},
        seed=0,
        optimizer={"learning_rate": 0.1, "name": "sgd"},
        model={"units": [8], "name": "m"},
        dataset={"download": True, "validation_size": 10, "sha256": "s", "url": "u", "file": "d.npz", "name": "d"},
    )
    assert resume.fingerprint(reordered, "jax", "abc") == resume.fingerprint(minimal(), "jax", "abc")


def test_the_fingerprint_of_a_config_is_stable():
    """The value a backup's state.json stores: a code change that changes it makes every backup made before
    it (a job waiting for its requeue) start afresh, so change this value knowingly."""
    assert resume.fingerprint(minimal(), "jax", "abc") == "2049e8c2226dd428"


# for_run ------------------------------------------------------------------------------------------------


def saved_backup(folder, cfg, backend="tensorflow", data_sha256="sha", run_id="run-1"):
    resume.Backup(folder, resume.fingerprint(cfg, backend, data_sha256)).record_run(run_id)


def test_a_local_run_never_resumes_its_default_folder(slurm, tmp_path):
    """Two runs given one hydra.run.dir: the second starts afresh, nobody asked it to resume."""
    cfg = compose([])
    saved_backup(tmp_path / "backup", cfg)
    backup = resume.for_run(cfg, "tensorflow", "sha", tmp_path, None)
    assert backup.folder == tmp_path / "backup"
    assert backup.config_hash == resume.fingerprint(cfg, "tensorflow", "sha")
    assert backup.run_id is None and backup.epochs == []


def test_a_named_backup_dir_is_resumed_by_the_same_configuration_only(slurm, tmp_path):
    folder = tmp_path / "named"
    cfg = compose([f"trainer.backup_dir={folder}"])
    saved_backup(folder, cfg, backend="jax", data_sha256="d1")
    backup = resume.for_run(cfg, "jax", "d1", tmp_path / "out", None)
    assert backup.folder == folder and backup.run_id == "run-1"
    assert backup.config_hash == resume.fingerprint(cfg, "jax", "d1")
    for backend, data_sha256 in [("tensorflow", "d1"), ("jax", "d2")]:  # another backend or data file
        assert resume.for_run(cfg, backend, data_sha256, tmp_path / "out", None).run_id is None


def test_a_requeued_slurm_job_resumes_its_jobs_backup(slurm, tmp_path):
    cfg = compose([])
    slurm(SLURM_JOB_ID="7", SLURM_CLUSTER_NAME="hpc")
    saved_backup(tmp_path / "checkpoints" / "hpc-7-2", cfg, run_id="job-2")
    saved_backup(tmp_path / "checkpoints" / "hpc-7-3", cfg, run_id="job-3")
    backup = resume.for_run(cfg, "tensorflow", "sha", tmp_path / "new-output", 2)
    assert backup.folder == tmp_path / "checkpoints" / "hpc-7-2" and backup.run_id == "job-2"
