"""A sweep resumes (src/sweeps/manifest.py, src/sweeps/sweep.py): the same command with the same hydra.sweep.dir runs only the
points not yet FINISHED, under the same MLflow parent run, in new job folders, and records no point twice."""

from __future__ import annotations

import json
import pickle
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_runs import run, start
from conftest import ROOT, base_overrides
from mlflow.tracking import MlflowClient

from src import compare
from src.config import Backend
from src.sweeps import manifest
from src.tracking import names


@pytest.fixture
def experiment(store, request) -> str:
    return "test-" + request.node.name.replace("[", "-").replace("]", "")


def runs_of(client: MlflowClient, experiment: str):
    """(the parent, its children) of the experiment's one sweep."""
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    [parent] = [r for r in found if names.PARENT_RUN not in r.data.tags]
    return parent, [r for r in found if r.data.tags.get(names.PARENT_RUN) == parent.info.run_id]


def job_folders(sweep_dir) -> set[str]:
    return {p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit()}


def finished_once_each(children, points: int) -> None:
    finished = [c.data.tags[names.SWEEP_POINT] for c in children if c.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == points  # every point FINISHED, none twice


def test_a_sweep_whose_driver_was_killed_runs_only_its_missing_points(data_dir, store, experiment, tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = ["-m", *base_overrides(data_dir, store, experiment), "backend=jax", "tracking.log_model=false",
               f"hydra.sweep.dir={sweep_dir}", "optimizer.learning_rate=0.02,0.01,0.005,0.001"]
    client = MlflowClient(store)
    driver = start(command, tmp_path)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            experiment_id = getattr(client.get_experiment_by_name(experiment), "experiment_id", None)
            done = client.search_runs([experiment_id], "attributes.status = 'FINISHED'") if experiment_id else []
            if len(done) >= 2:
                break
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.communicate(timeout=60)
    finally:
        driver.kill()
    parent, children = runs_of(client, experiment)
    before = sum(c.info.status == "FINISHED" for c in children)
    assert 2 <= before < 4 and parent.info.status == "RUNNING"  # the killed driver ended nothing
    folders_before = job_folders(sweep_dir)

    again = run(["python", "-m", "src.train", *command], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    assert f"{before} point(s) already FINISHED (skipped), {4 - before} to run" in again.stdout
    parent, children = runs_of(client, experiment)
    assert parent.info.status == "FINISHED" and "is RUNNING again" in again.stdout  # the same parent, reopened
    finished_once_each(children, 4)
    new_folders = job_folders(sweep_dir) - folders_before
    assert len(new_folders) == 4 - before  # only the missing points ran, each in a folder of its own
    assert min(int(name.split("_")[0]) for name in new_folders) >= len(folders_before)  # none overwritten
    assert "Points: 4 of 4 finished" in (sweep_dir / "sweep_summary.md").read_text()


def test_only_the_point_that_raised_runs_again(data_dir, store, experiment, tmp_path):
    """One point's data folder lacks its file: it fails, the sweep ends FAILED, compare says what is missing and how
    to continue; with the file in place, the printed command runs that point alone."""
    empty = tmp_path / "empty"
    empty.mkdir()
    sweep_dir = tmp_path / "sweep"
    command = ["-m", *base_overrides(data_dir, store, experiment)[1:], "backend=jax", "tracking.log_model=false",
               f"hydra.sweep.dir={sweep_dir}", f"data_dir={data_dir},{empty}"]
    first = run(["python", "-m", "src.train", *command], tmp_path)
    assert first.returncode != 0
    client = MlflowClient(store)
    parent, children = runs_of(client, experiment)
    assert parent.info.status == "FAILED" and [c.info.status for c in children] == ["FINISHED"]
    printed = first.stdout.split("Continue it (points already FINISHED are skipped, failed ones rerun) with:\n")[1]
    resume = printed.splitlines()[0].strip()
    assert resume == manifest.resume_command(command[1:], sweep_dir)  # this interpreter, the same overrides and folder

    compared = run(["python", "-m", "src.compare", parent.info.run_id, "--tracking-uri", store, "--no-log",
                    "--out", str(tmp_path / "cmp")], tmp_path)
    assert f"Sweep {sweep_dir}: 1 of 2 finished, 0 failed, 1 missing (2 points)." in compared.stdout
    assert resume in compared.stdout

    shutil.copy(data_dir / "mnist.npz", empty / "mnist.npz")
    again = run(["bash", "-c", resume], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "1 point(s) already FINISHED (skipped), 1 to run" in again.stdout
    parent, children = runs_of(client, experiment)
    assert parent.info.status == "FINISHED" and len(children) == 2
    finished_once_each(children, 2)


def test_a_rerun_point_retries_the_latest_of_its_runs_that_did_not_finish(store, experiment):
    """sweep.unfinished: what a rerun point's new run names as the run it retries (tag sweep.retry_of), for one
    point (a lone job) or every point at once (a fused group)."""
    from src.sweeps import sweep

    client = MlflowClient(store)
    experiment_id = client.create_experiment(experiment)
    parent = client.create_run(experiment_id, start_time=1000).info.run_id
    other = client.create_run(experiment_id, start_time=1000).info.run_id

    def child(point: str, status: str, start: int, of: str = parent) -> str:
        run_id = client.create_run(experiment_id, start_time=start, tags={names.PARENT_RUN: of,
                                                                          names.SWEEP_POINT: point}).info.run_id
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        return run_id

    child("a", "FAILED", 2000)
    latest_a = child("a", "KILLED", 3000)
    child("b", "FINISHED", 2500)
    running_c = child("c", "RUNNING", 2600)
    child("d", "FAILED", 2700, of=other)  # another sweep's

    assert sweep.unfinished(parent) == {"a": latest_a, "c": running_c}
    assert sweep.unfinished(parent, "a") == {"a": latest_a}
    assert sweep.unfinished(parent, "b") == {}  # FINISHED: nothing to retry
    assert sweep.unfinished(parent, "d") == {}


def test_a_point_hash_ignores_where_things_go_and_names_what_is_trained():
    from conftest import compose

    base = manifest.point_hash(compose([]))
    assert manifest.point_hash(compose(["tracking.tracking_uri=sqlite:////elsewhere.db", "trainer.verbose=0",
                                        "trainer.backup_dir=/tmp/x"])) == base
    assert manifest.point_hash(compose(["optimizer.learning_rate=0.5"])) != base
    assert manifest.point_hash(compose(["seed=1"])) != base


def test_plan_skips_finished_points_resumes_checkpoints_and_otherwise_starts_anew(tmp_path):
    from types import SimpleNamespace as NS

    def child(status, folder=None, start=0):
        tags = {names.BACKUP_DIR: str(folder)} if folder else {}
        return NS(info=NS(status=status, start_time=start), data=NS(tags=tags))

    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "state.json").write_text("{}")
    assert manifest.plan([child("FAILED"), child("FINISHED")]) == ("skip", None)
    assert manifest.plan([child("KILLED", backup)]) == ("resume", str(backup))
    assert manifest.plan([child("FAILED", tmp_path / "gone")]) == ("new", None)
    assert manifest.plan([]) == ("new", None)


def test_a_sweep_composes_each_point_once_and_hands_every_caller_its_own_copy():
    """Hydra composes a point for its sweeper's check, the manifest and the launcher: the sweeper's loader composes
    it once (~0.1 s a point) and gives each caller a copy to set its job number in."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from src import config

    config.register()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(ROOT / "conf")))
    master = loader.load_configuration("config", ["seed=1,2"], RunMode.MULTIRUN)
    from hydra_plugins.le5_sweep.sweeper import ComposedOnce  # as Hydra's plugin scan (re)loaded it

    composed = []
    real = loader.load_sweep_config
    loader.load_sweep_config = lambda *a: composed.append(a[1]) or real(*a)  # count what the real loader composes
    once = ComposedOnce(loader)
    first = once.load_sweep_config(master, ["seed=1"])
    with open_dict(first):
        first.hydra.job.num = 7
    again, other = once.load_sweep_config(master, ["seed=1"]), once.load_sweep_config(master, ["seed=2"])
    assert composed == [["seed=1"], ["seed=2"]]
    assert again.seed == 1 and other.seed == 2
    assert OmegaConf.select(again, "hydra.job.num", throw_on_missing=False) is None  # a copy, not the first caller's
    assert once.get_sources() == loader.get_sources()  # the rest is the loader's own
    loader.load_sweep_config = real
    sent = pickle.loads(pickle.dumps(once))  # hydra-submitit-launcher pickles its launcher, loader included
    assert sent.load_sweep_config(master, ["seed=2"]).seed == 2 and composed == [["seed=1"], ["seed=2"]]


def _child(point, state, start, folder=None):
    from types import SimpleNamespace as NS

    tags = {names.SWEEP_POINT: point} if point else {}
    if folder:
        tags[names.BACKUP_DIR] = str(folder)
    return NS(info=NS(status=state, start_time=start), data=NS(tags=tags))


def test_the_manifest_keeps_each_points_first_place_and_is_written_whole(tmp_path):
    found = manifest.Manifest(tmp_path)
    assert found.points == {} and not found.path.exists()
    found.add("aaa", ["seed=1"])
    found.add("bbb", ["seed=2"])
    found.add("aaa", ["seed=9"])  # the same point asked again keeps its place and overrides
    found.save(["-m", "seed=1,2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [manifest.FILE]  # no temporary file left
    again = manifest.Manifest(tmp_path)
    assert again.points == {"aaa": {"index": 0, "overrides": ["seed=1"]}, "bbb": {"index": 1, "overrides": ["seed=2"]}}
    assert again.data["command"] == ["-m", "seed=1,2"]
    assert again.data["resume"] == manifest.resume_command(["-m", "seed=1,2"], tmp_path)
    assert again.data["resume"].endswith(f"-m seed=1,2 hydra.sweep.dir={tmp_path}")


def test_a_resume_command_replaces_the_sweep_folder_it_was_given():
    command = manifest.resume_command(["-m", "hydra.sweep.dir=/old", "seed=1,2"], Path("/new"))
    assert "/old" not in command and command.endswith("-m seed=1,2 hydra.sweep.dir=/new")


def test_progress_counts_each_point_by_its_last_child_and_finished_anywhere_wins():
    found = manifest.Manifest(Path("/nonexistent"))
    for point in ("done", "retried", "failed", "killed", "running", "missing"):
        found.add(point, [])
    children = [
        _child("done", "FINISHED", 1), _child("done", "FAILED", 2),        # finished once: finished
        _child("retried", "FAILED", 1), _child("retried", "FINISHED", 2),
        _child("failed", "KILLED", 2), _child("failed", "FAILED", 3),
        _child("killed", "FAILED", 1), _child("killed", "KILLED", 5),
        _child("running", "FAILED", 1), _child("running", "RUNNING", 4),
        _child("other", "FINISHED", 1), _child(None, "FINISHED", 1),   # not this sweep's points
    ]
    progress = found.progress(children[::-1])  # the order the store returns them in does not matter
    assert progress == manifest.Progress(total=6, finished=2, failed=2, running=1, missing=1)
    assert progress.line() == "2 of 6 finished, 2 failed, 1 missing, 1 running"
    assert manifest.Progress(total=2, finished=2, failed=0, running=0, missing=0).line() == \
        "2 of 2 finished, 0 failed, 0 missing"


def test_job_numbers_continue_after_the_highest_job_folder(tmp_path):
    assert manifest.next_job_num(tmp_path) == 0
    for name in ("0_123_0", "7_123_7", "3_x"):
        (tmp_path / name).mkdir()
    (tmp_path / "12_file").write_text("")  # a file, not a job folder
    (tmp_path / ".submitit").mkdir()
    assert manifest.next_job_num(tmp_path) == 8


def test_children_are_grouped_by_point_oldest_first():
    a2, a1, b1 = _child("a", "FAILED", 2), _child("a", "FINISHED", 1), _child("b", "RUNNING", None)
    assert manifest.by_point([a2, b1, a1, _child(None, "FINISHED", 0)]) == {"a": [a1, a2], "b": [b1]}


def test_plan_resumes_the_latest_checkpoint_and_never_a_running_runs(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        folder.mkdir()
        (folder / "state.json").write_text("{}")
    assert manifest.plan([_child("p", "FAILED", 1, old), _child("p", "KILLED", 2, new)]) == ("resume", str(new))
    assert manifest.plan([_child("p", "KILLED", 1, old), _child("p", "FAILED", 2)]) == ("resume", str(old))
    assert manifest.plan([_child("p", "RUNNING", 1, old)]) == ("new", None)  # its process may still write there


def test_a_point_hash_is_stable_so_sweeps_of_earlier_versions_still_resume():
    """Child runs carry the hash as a tag: the same point must hash alike however its config was written (key order,
    an interpolation, Hydra's node, a setting that does not change what is trained), and as it did before."""
    from omegaconf import OmegaConf

    point = {"seed": 1, "model": {"units": [512], "name": "mnist_dense"}, "trainer": {"epochs": 5, "lr": "${seed}"}}
    found = manifest.point_hash(OmegaConf.create(point))
    assert found == "30c9adeb313cf1c4"  # sha256 of the sorted resolved JSON, 16 hex digits: never change it
    same = {"hydra": {"job": {"num": 3}}, "trainer": {"lr": 1, "epochs": 5, "verbose": 0},
            "model": {"name": "mnist_dense", "units": [512]}, "seed": 1, "tracking": {"tracking_uri": "x"}}
    assert manifest.point_hash(OmegaConf.create(same)) == found
    assert manifest.point_hash(OmegaConf.create({**point, "seed": 2})) != found
    assert manifest.point_hash(OmegaConf.create({"trainer": {"epochs": 5}, "tracking": 3})) != found  # no KeyError


def test_a_resume_command_is_a_multirun_in_the_sweeps_folder():
    assert manifest.resume_command(["seed=1,2"], Path("/new")).endswith(" -m src.train -m seed=1,2 hydra.sweep.dir=/new")


@dataclass
class SimpleBackend:
    backend: Backend = Backend.tensorflow


def test_a_point_hash_reads_the_schemas_enums_as_their_names():
    """The composed config holds the schema's enums (backend, trainer.loop): they hash as the strings a YAML writes."""
    from omegaconf import OmegaConf

    typed = OmegaConf.structured(SimpleBackend(backend=Backend.jax))
    assert OmegaConf.get_type(typed, "backend") is Backend
    assert manifest.point_hash(typed) == manifest.point_hash(OmegaConf.create({"backend": "jax"}))
