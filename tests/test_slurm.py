"""Against a real Slurm: the local one-node cluster (slurm/local-cluster/start.sh, fake GPUs).

Run with `bash slurm/ci-slurm-tests.sh` (starts the cluster, runs these, stops it). Jobs run the
project's .venv from the repository root, like on a cluster with a shared filesystem; data, the
MLflow store, logs and Hydra outputs go to pytest's temporary folders.
"""

from __future__ import annotations

import json
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, base_overrides, run_cli
from src.training import resume
from src.sweeps import sweep

pytestmark = pytest.mark.slurm
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
# Each sweep job on the 2-CPU node: one core, one fake GPU, little memory.
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=10"]
# Slow enough epochs (250 steps of 2 samples) to act on a job in the middle of its training.
SLOW = ["trainer.batch_size=2"]


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no Slurm client (sinfo) on PATH: start the local cluster with slurm/local-cluster/start.sh"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as err:
        return f"sinfo failed ({err}): is the cluster up? slurm/local-cluster/start.sh"
    if states.returncode != 0 or not {"idle", "mixed", "allocated"} & set(states.stdout.split()):
        return f"no Slurm node takes jobs ({(states.stdout + states.stderr).strip()}): slurm/local-cluster/start.sh"
    if not (ROOT / ".venv" / "bin" / "python").exists():
        return f"jobs need the project's venv at {ROOT / '.venv'}"
    return None


@pytest.fixture
def experiment(store, request) -> str:
    """conftest's, with a parametrized test's [id] made safe for Hydra's override grammar."""
    return re.sub(r"[^\w-]", "-", f"test-{request.node.name}")[:200]


@pytest.fixture(autouse=True)
def cluster():
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)


def overrides(data_dir, store, experiment, tmp_path, *extra, hardware_cpu=True):
    found = [o for o in base_overrides(data_dir, store, experiment) if hardware_cpu or not o.startswith("hardware=")]
    return [*found, f"hydra.run.dir={tmp_path}/run", *extra]


def sbatch(script: str, args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> str:
    # Command-line options override the script's #SBATCH lines: sized for the 2-CPU test node.
    done = subprocess.run(
        ["sbatch", "--parsable", "--cpus-per-task=1", "--mem=1G", f"--output={tmp_path}/%x-%j.out", script, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job(job_id: str) -> dict[str, str]:
    line = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(tok.partition("=")[::2] for tok in line.split())


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_done(job_id: str, timeout: float = 300) -> dict[str, str]:
    def ended():
        found = job(job_id)
        assert found.get("Reason") not in {"PartitionConfig", "ReqNodeNotAvail"}, f"job {job_id} can never run: {found}"
        return found.get("JobState") in TERMINAL and found

    return wait_for(ended, timeout, f"job {job_id} to end")


def still_running(job_id: str, tmp_path: Path) -> bool:
    assert job(job_id).get("JobState") not in TERMINAL, log_of(tmp_path, job_id)[-3000:]
    return True


def log_of(tmp_path: Path, job_id: str) -> str:
    return "".join(p.read_text() for p in tmp_path.glob(f"*-{job_id}.out"))


def steps(run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def runs(experiment: str) -> list:
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_train_sbatch_finishes_with_every_epoch_and_passes_overrides_unchanged(data_dir, store, experiment, tmp_path):
    # A value with spaces, a comma and '=' reaches Hydra intact through "$@".
    name = f"{experiment}, lr=1e-3 x"
    args = overrides(data_dir, store, experiment, tmp_path, "trainer.epochs=2", f"tracking.experiment_name='{name}'")
    job_id = sbatch("slurm/train.sbatch", args, tmp_path)
    end = wait_done(job_id)
    assert end["JobState"] == "COMPLETED", log_of(tmp_path, job_id)[-3000:]
    (run,) = runs(name)
    assert run.info.status == "FINISHED"
    assert steps(run.info.run_id) == [1, 2]
    assert run.data.tags["slurm.job_id"] == job_id
    assert run.data.params["hardware.name"] == "cpu"  # the later override won over the script's hardware=gpu
    assert f"job {job_id} (restart 0)" in log_of(tmp_path, job_id)
    assert not (resume.CHECKPOINTS / f"le5local-{job_id}").exists()  # finished: its backup is gone


def test_gpu_guard_fails_a_gpu_job_on_a_node_without_a_real_gpu(data_dir, store, experiment, tmp_path):
    job_id = sbatch("slurm/train.sbatch", overrides(data_dir, store, experiment, tmp_path, hardware_cpu=False), tmp_path)
    end = wait_done(job_id)
    log = log_of(tmp_path, job_id)
    assert end["JobState"] == "FAILED" and end["ExitCode"] == "2:0", log[-3000:]
    assert "GPUs: 0" in log  # Slurm gave the job a (fake) GPU ...
    assert "hardware=gpu, but tensorflow sees no GPU" in log and "CUDA_VISIBLE_DEVICES=0" in log  # ... TF sees none
    assert "Traceback" not in log
    assert runs(experiment) == []  # refused before any MLflow run started


def test_four_point_sweep_is_one_parent_with_four_children(data_dir, store, experiment, tmp_path):
    sweep_dir = tmp_path / "sweep"
    started = time.perf_counter()
    result = run_cli(
        ["-m", *LAUNCHER, *base_overrides(data_dir, store, experiment), "trainer.epochs=2",
         f"hydra.sweep.dir={sweep_dir}", "optimizer=rmsprop,adam", "optimizer.learning_rate=0.001,0.01"],
        timeout=600,
    )
    wall = time.perf_counter() - started
    print(f"\n4-point hydra/launcher=slurm sweep: {wall:.1f} s wall")
    assert result.returncode == 0, result.stderr[-3000:]
    parent = [r for r in runs(experiment) if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs(experiment) if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent[0].info.run_id}
    assert parent[0].info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children)
    assert all(steps(c.info.run_id) == [1, 2] for c in children)
    # One job array: one array job id, tasks 0-3, each in its own folder.
    assert len({c.data.tags["slurm.array_job_id"] for c in children}) == 1
    assert sorted(c.data.tags["slurm.array_task_id"] for c in children) == ["0", "1", "2", "3"]
    array = children[0].data.tags["slurm.array_job_id"]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        f"{n}_{array}_{n}" for n in range(4)
    ]
    text = (sweep_dir / sweep.SUMMARY_FILE).read_text()
    assert "4 runs, 4 finished" in text and "| optimizer | optimizer.learning_rate |" in text
    assert parent[0].data.tags["best_run_id"] in {c.info.run_id for c in children}
    assert "Sweep summary" in result.stdout + result.stderr


@pytest.mark.parametrize("how", ["time-limit signal", "scontrol requeue"])
def test_requeued_job_resumes_into_the_same_run_without_gaps_or_duplicates(how, data_dir, store, experiment, tmp_path):
    epochs = 10
    started = time.perf_counter()
    job_id = sbatch("slurm/train.sbatch", overrides(data_dir, store, experiment, tmp_path, f"trainer.epochs={epochs}", *SLOW), tmp_path)
    first = wait_for(lambda: still_running(job_id, tmp_path) and runs(experiment), 120, "the MLflow run")[0]
    wait_for(lambda: len(steps(first.info.run_id)) >= 2, 120, "two logged epochs")
    if how == "time-limit signal":
        # What SLURM sends 120 s before the time limit (#SBATCH --signal=B:USR1@120): the script requeues.
        subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)
    else:
        subprocess.run(["scontrol", "requeue", job_id], check=True)  # what preemption with requeue does
    # A requeued job waits the job credential lifetime before it starts again (10 s on the local cluster).
    end = wait_done(job_id)
    print(f"\nrequeue test ({how}): {time.perf_counter() - started:.1f} s wall")
    log = log_of(tmp_path, job_id)
    assert end["JobState"] == "COMPLETED", log[-3000:]
    (run,) = runs(experiment)  # the same run, reopened
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["slurm.restart_count"] == "1"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s"):
        assert steps(run.info.run_id, key) == list(range(1, epochs + 1)), key
    assert "Resuming from" in log and "(restart 1)" in log


def test_a_sweep_with_a_cancelled_array_task_resumes_only_that_task_from_its_checkpoint(
    data_dir, store, experiment, tmp_path
):
    """scancel of one task of the sweep's job array: the rerun command submits that point alone, which continues its
    own MLflow run from its last finished epoch; the finished point is not submitted again."""
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *LAUNCHER, *base_overrides(data_dir, store, experiment), *SLOW, "trainer.verbose=0",
            "tracking.log_model=false", f"hydra.sweep.dir={sweep_dir}", "trainer.epochs=1,12"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        def long_child():
            found = [r for r in runs(experiment) if r.data.params.get("trainer.epochs") == "12"]
            return found if found and steps(found[0].info.run_id) else None

        [child] = wait_for(long_child, 240, "the 12-epoch point's first epoch")
        subprocess.run(["scancel", f"{child.data.tags['slurm.array_job_id']}_{child.data.tags['slurm.array_task_id']}"],
                       check=True)
        output, _ = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
            subprocess.run(["scancel", "--name=le5"])
    assert driver.returncode != 0, output[-3000:]
    cancelled = {r.info.run_id: r for r in runs(experiment)}[child.info.run_id]
    assert cancelled.info.status in ("KILLED", "FAILED")
    done_before = len(steps(child.info.run_id))
    assert done_before < 12

    again = run_cli(args, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "1 point(s) already FINISHED (skipped), 1 to run (1 from their checkpoints)" in again.stdout + again.stderr
    found = runs(experiment)
    parent = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)  # the same run continued
    assert steps(child.info.run_id) == list(range(1, 13))  # every epoch once: the first ones were not redone


def kill_9_python(job_id: str) -> None:
    """kill -9 of the job's Python process (not its srun), as a segfault or the OOM killer would."""
    listed = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, check=True).stdout
    killed = []
    for line in listed.splitlines()[1:]:
        pid = int(line.split()[0])
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode()).name.startswith("python") and b"submitit.core._submit" in argv:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    assert killed, listed


def test_hard_crashed_sweep_job_is_reported_failed_without_a_hang(data_dir, store, experiment, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *LAUNCHER, *base_overrides(data_dir, store, experiment), "trainer.epochs=30", *SLOW,
            f"hydra.sweep.dir={sweep_dir}"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        child = wait_for(lambda: [r for r in runs(experiment) if "mlflow.parentRunId" in r.data.tags], 180, "the child run")[0]
        wait_for(lambda: steps(child.info.run_id), 120, "a logged epoch")
        tags = child.data.tags  # submitit submits a one-point sweep as a plain job, not an array
        task = f"{tags['slurm.array_job_id']}_{tags['slurm.array_task_id']}" if "slurm.array_job_id" in tags else tags["slurm.job_id"]
        kill_9_python(tags["slurm.job_id"])
        output, _ = driver.communicate(timeout=180)  # submitit learns of the death through sacct: no hang
    finally:
        if driver.poll() is None:
            driver.kill()
            subprocess.run(["scancel", "--name=le5"])
    assert driver.returncode != 0
    assert "FAILED" in output, output[-3000:]
    assert job(task)["JobState"] == "FAILED"
    by_id = {r.info.run_id: r for r in runs(experiment)}
    assert by_id[child.info.run_id].info.status == "FAILED"  # not left RUNNING
    parent = by_id[child.data.tags["mlflow.parentRunId"]]
    assert parent.info.status == "FAILED"
    assert json.loads((sweep_dir / sweep.PARENT_FILE).read_text())["run_id"] == parent.info.run_id
    shutil.rmtree(resume.CHECKPOINTS / f"le5local-{task}-0", ignore_errors=True)


def test_preempted_sweep_job_is_requeued_by_submitit_and_resumes_its_run(data_dir, store, experiment, tmp_path):
    epochs = 8
    args = ["-m", *LAUNCHER, *base_overrides(data_dir, store, experiment), f"trainer.epochs={epochs}", *SLOW,
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "src.train", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        child = wait_for(lambda: [r for r in runs(experiment) if "mlflow.parentRunId" in r.data.tags], 180, "the child run")[0]
        wait_for(lambda: len(steps(child.info.run_id)) >= 2, 120, "two logged epochs")
        # The signal submitit asks SLURM for before a time limit or on preemption (USR2): it checkpoints
        # the launcher's call and requeues the job, which reruns it.
        subprocess.run(["scancel", "--signal=USR2", child.data.tags["slurm.job_id"]], check=True)
        output, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            subprocess.run(["scancel", "--name=le5"])
    assert driver.returncode == 0, output[-3000:]
    by_id = {r.info.run_id: r for r in runs(experiment)}
    assert len(by_id) == 2  # the parent and the one child: the requeued job reopened its run
    run = by_id[child.info.run_id]
    assert run.info.status == "FINISHED" and run.data.tags["slurm.restart_count"] == "1"
    for key in ("loss", "val_loss", "epoch_time_s"):
        assert steps(run.info.run_id, key) == list(range(1, epochs + 1)), key
    assert by_id[child.data.tags["mlflow.parentRunId"]].info.status == "FINISHED"


def test_optuna_sweep_runs_trials_as_slurm_jobs_two_at_a_time_and_prunes(data_dir, store, experiment, tmp_path):
    """hydra/sweeper=optuna with hydra/launcher=slurm: each trial one SLURM job, reporting every epoch to the
    study in the sweep folder (the shared filesystem); a new trial starts as soon as one ends."""
    import optuna
    from optuna.trial import TrialState

    from src.sweeps import search
    from test_search import STUDY, load

    sweep_dir = tmp_path / "sweep"
    started = time.perf_counter()
    result = run_cli(
        ["-m", *LAUNCHER, *base_overrides(data_dir, store, experiment), *STUDY, "hydra.sweeper.n_jobs=2",
         "hydra.sweeper.n_startup_trials=2", f"hydra.sweep.dir={sweep_dir}"],  # trials 0-3 run two by two
        timeout=600,
    )
    print(f"\n6-trial hydra/sweeper=optuna hydra/launcher=slurm study: {time.perf_counter() - started:.1f} s wall")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(sweep_dir).trials
    assert [t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials] == [True] * 6
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(len(t.intermediate_values) < 3 for t in pruned), [(t.state, t.params) for t in trials]

    children = [r for r in runs(experiment) if "mlflow.parentRunId" in r.data.tags]
    by_trial = {int(c.data.tags["optuna.trial"]): c for c in children}
    assert sorted(by_trial) == list(range(6)) and all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["slurm.job_id"] for c in children}) == 6  # one SLURM job per trial
    for t in pruned:
        assert by_trial[t.number].data.tags["pruned_at_epoch"] == str(len(t.intermediate_values))
        assert steps(by_trial[t.number].info.run_id) == list(range(1, len(t.intermediate_values) + 1))
    # n_jobs=2: two trials in flight at once (asked before the other was told), never three. Counted on the study's
    # own ask/tell times: the runs' times also hold each job's queueing and imports, which under CI's load once left
    # two jobs submitted together with MLflow runs that did not overlap.
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    in_flight = max(sum(s <= start < e for s, e in spans) for start, _ in spans)
    assert in_flight == 2


def test_a_fused_sweep_in_one_job_is_requeued_and_resumes_each_point_into_its_own_run(data_dir, store, experiment,
                                                                                       tmp_path):
    """slurm/sweep.sbatch hydra/launcher=fused trains the sweep's points together in that job; `scontrol requeue`
    (what preemption does) ends them KILLED after their last finished epoch and reruns the command, which resumes each
    point into its own run: every epoch once."""
    epochs = 8
    args = [*base_overrides(data_dir, store, experiment), "hydra/launcher=fused", "backend=jax", "tracking.log_model=false",
            f"trainer.epochs={epochs}", *SLOW, f"hydra.sweep.dir={tmp_path}/sweep", "optimizer.learning_rate=1e-3,3e-3"]
    args = [a for a in args if a != "trainer.epochs=1"]
    job_id = sbatch("slurm/sweep.sbatch", args, tmp_path)
    children = lambda: [r for r in runs(experiment) if "mlflow.parentRunId" in r.data.tags]  # noqa: E731
    first = wait_for(lambda: still_running(job_id, tmp_path) and len(children()) == 2 and children(), 180,
                     "the two child runs")
    wait_for(lambda: still_running(job_id, tmp_path) and len(steps(first[0].info.run_id)) >= 2, 180, "two epochs")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    end = wait_done(job_id, timeout=400)
    log = log_of(tmp_path, job_id)
    assert end["JobState"] == "COMPLETED", log[-3000:]
    assert "a fused sweep, trained in this job (restart 1)" in log and "resume" in log.lower()
    after = children()
    assert {r.info.run_id for r in after} == {r.info.run_id for r in first}  # each point's own run, reopened
    for run in after:
        assert run.info.status == "FINISHED"
        for key in ("loss", "val_loss"):
            assert steps(run.info.run_id, key) == list(range(1, epochs + 1)), key
