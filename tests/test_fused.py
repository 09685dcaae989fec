"""hydra/launcher=fused (src/fused/launch.py, src/fused/vmapped.py): a sweep's points trained together, each its own run.

The program's tests run Keras on JAX in this process: run them with KERAS_BACKEND=jax (the CI's second pass);
under another backend they are skipped. The launcher's tests run `backend=jax` in subprocesses (CI's first pass).
Real Keras training on the synthetic files of conftest.py, real SQLite stores, real Hydra multiruns; no mocks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import BACKEND, compose

jax_only = pytest.mark.skipif(BACKEND != "jax", reason="trains in this process on Keras's JAX backend: KERAS_BACKEND=jax")
# The launcher's tests run `backend=jax` in subprocesses: they need JAX installed, not this process on JAX (so they
# run in CI's first pass, which starts processes; its JAX pass runs only what trains in the pytest process).
jax_installed = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs JAX: pip install jax")

# Four points of one group: two learning rates x two seeds, Dropout on (each member draws its own masks).
POINTS = [(1, 1e-3), (2, 1e-3), (1, 1e-2), (3, 3e-4)]


def _builder(data_dir, *overrides):
    """The data and a function building a compiled model for (seed, learning rate), as a lone run builds it."""
    import keras

    from src.data import datasets as data
    from src.training import models

    cfg = compose([f"data_dir={data_dir}", "dataset.sha256=null", "dataset.validation_size=100", "model.rate=0.3",
                   *overrides])
    ds = data.load(cfg.dataset, data_dir)

    def build(seed: int, learning_rate: float):
        keras.utils.set_random_seed(seed)
        model = models.build_model(cfg.model, ds.spec)
        cfg.optimizer.learning_rate = learning_rate
        model.compile(optimizer=models.build_optimizer(cfg.optimizer), loss=ds.spec.loss, metrics=["accuracy"])
        return model

    return ds, build


@jax_only
@pytest.mark.parametrize("at_once, ahead", [(None, False), (2, False), (3, True), (None, True)])
def test_a_fused_epoch_trains_each_member_as_its_lone_compiled_run(data_dir, at_once, ahead):
    """Every member of a 4-point group (learning rate x seed, Dropout on) gets the per-epoch logs of the same point
    trained alone by compiled.Epochs: its own order, initial weights, masks and learning rate, its own loss, however
    many members are vmapped at once (all, the GPU's default; two by two; 3 then 1) and whether the program was
    compiled ahead (on a background thread) or at its first call. Only the reduction order of the batched matrix
    products may differ."""
    import jax

    from src.training import compiled
    from src.fused import vmapped

    ds, build = _builder(data_dir)
    epochs = 3
    lone = [compiled.Epochs(build(seed, lr), ds, 64, seed, budget_bytes=10**9).fit(epochs, verbose=0)
            for seed, lr in POINTS]

    members = [build(seed, lr) for seed, lr in POINTS]
    program = vmapped.Program(members[0], ds, 64)
    program.build(members[0], program.rows("val"))
    if ahead:  # while the other members are built, as the launcher does
        program.compile_ahead(len(POINTS), at_once)
    for m in members[1:]:
        program.build(m, program.rows("val"))
    state = program.stack([program.state_of(m) for m in members])
    keys = program.keys([seed for seed, _ in POINTS])
    fused = []
    for epoch in range(epochs):
        state, train, val = program.epoch(state, keys, [epoch] * len(POINTS), [True] * len(POINTS), at_once)
        fused.append(jax.device_get((train, val)))
    if ahead:  # the executables compiled ahead ran (a failed one would have been dropped for jit's)
        assert {("epoch", len(POINTS), at_once), ("test", len(POINTS))} <= set(program._ahead)
        test = program.evaluate(state)
        again = vmapped.Program(members[0], ds, 64).evaluate(state)  # compiled at its call
        for key, values in again.items():
            np.testing.assert_allclose(test[key], values, rtol=1e-6)
    for i, history in enumerate(lone):
        for epoch, (train, val) in enumerate(fused):
            assert float(train["loss"][i]) == pytest.approx(history["loss"][epoch], rel=1e-5), (i, epoch)
            assert float(val["loss"][i]) == pytest.approx(history["val_loss"][epoch], rel=1e-5, abs=1e-6), (i, epoch)
            assert float(val["accuracy"][i]) == pytest.approx(history["val_accuracy"][epoch], abs=1e-6), (i, epoch)
    # the members did differ (a learning rate, a seed): not one run copied four times
    assert len({round(float(fused[-1][1]["loss"][i]), 6) for i in range(len(POINTS))}) == len(POINTS)


@jax_only
def test_an_inactive_member_keeps_its_state_while_the_others_train(data_dir):
    import jax

    from src.fused import vmapped

    ds, build = _builder(data_dir)
    members = [build(seed, lr) for seed, lr in POINTS[:2]]
    program = vmapped.Program(members[0], ds, 64)
    for m in members:
        program.build(m, program.rows("val"))
    state = program.stack([program.state_of(m) for m in members])
    keys = program.keys([1, 2])
    before = jax.device_get(state)
    after, _, _ = program.epoch(state, keys, [0, 0], [True, False])
    after = jax.device_get(after)
    for old, new in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
        np.testing.assert_array_equal(new[1], old[1])  # frozen: weights, optimizer step, seed state
    assert any(not np.array_equal(old[0], new[0]) for old, new in
               zip(jax.tree_util.tree_leaves(before[0]), jax.tree_util.tree_leaves(after[0])))


@jax_only
@pytest.mark.parametrize("active, at_once", [([True, False, False, True], 2), ([False, False, True, False], 2),
                                             ([True, True, True, False], 2), ([True, False, True, True], None)])
def test_a_shrunk_group_trains_only_its_live_members_with_the_same_results(data_dir, active, at_once):
    """live_epoch gathers the live members into a smaller program (two of four, two by two: one chunk; one of four:
    alone; three of four vmapped together: those three) or, when that saves no chunk (three of four, two by two),
    trains all: the live members' states and logs equal those of the full program with the same mask, and the frozen
    ones' states are untouched."""
    import jax

    from src.fused import vmapped

    ds, build = _builder(data_dir)
    members = [build(seed, lr) for seed, lr in POINTS]
    program = vmapped.Program(members[0], ds, 64)
    for m in members:
        program.build(m, program.rows("val"))
    state = program.stack([program.state_of(m) for m in members])
    keys = program.keys([seed for seed, _ in POINTS])
    full, full_train, full_val = program.epoch(state, keys, [1, 2, 0, 3], active, at_once)
    full, full_train, full_val = jax.device_get((full, full_train, full_val))
    live, train, val = program.live_epoch(state, keys, [1, 2, 0, 3], active, at_once)
    live = jax.device_get(live)
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(live)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    for i in (i for i, on in enumerate(active) if on):
        for logs, want in ((train, full_train), (val, full_val)):
            for key in want:
                assert float(logs[key][i]) == pytest.approx(float(want[key][i]), rel=1e-5, abs=1e-6), (i, key)


@jax_only
def test_a_refilled_slot_trains_its_new_member_from_its_own_epoch_0_as_alone(data_dir):
    """After two epochs a member's slot is given to a new member (Program.put: an Optuna study's freed slot): the
    new member trains its epochs 0 and 1 beside a member at its epochs 2 and 3, in the same program, and each one's
    logs equal its lone compiled run's; the test metrics of chosen members equal theirs in the whole group's."""
    import jax

    from src.fused import vmapped
    from src.training import compiled

    ds, build = _builder(data_dir)
    stay, leave, come = POINTS[0], POINTS[1], POINTS[2]
    lone = {p: compiled.Epochs(build(*p), ds, 64, p[0], budget_bytes=10**9).fit(epochs, verbose=0)
            for p, epochs in ((stay, 4), (leave, 2), (come, 2))}
    models = {p: build(*p) for p in (stay, leave, come)}
    program = vmapped.Program(models[stay], ds, 64)
    for m in models.values():
        program.build(m, program.rows("val"))
    state = program.stack([program.state_of(models[p]) for p in (stay, leave)])
    seen = {stay: [], leave: [], come: []}
    slots, epochs = [stay, leave], [0, 0]
    for step in range(4):
        if step == 2:  # `leave` ended after its 2 epochs: `come` takes its slot, from its epoch 0
            state = program.put(state, 1, program.state_of(models[come]))
            slots[1], epochs[1] = come, 0
        state, train, val = program.epoch(state, program.keys([p[0] for p in slots]), epochs, [True, True])
        train, val = jax.device_get((train, val))
        for i, p in enumerate(slots):
            seen[p] += [float(train["loss"][i]), float(val["loss"][i])]
        epochs = [e + 1 for e in epochs]
    for p, history in lone.items():
        want = [value for pair in zip(history["loss"], history["val_loss"]) for value in pair]
        assert seen[p] == pytest.approx(want, rel=1e-5, abs=1e-6), p
    whole = program.evaluate(state, "test", keep=True)
    one = program.evaluate(state, "test", members=[1])
    assert float(one["loss"][0]) == pytest.approx(float(whole["loss"][1]), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The launcher, as users run it (subprocesses on backend=jax; run once, in the JAX pass)


def _sweep(data_dir, store, experiment, sweep_dir, *extra):
    from conftest import base_overrides

    return ["-m", "hydra/launcher=fused", "backend=jax", *base_overrides(data_dir, store, experiment),
            "trainer.epochs=2", "tracking.log_model=false", f"hydra.sweep.dir={sweep_dir}", *extra]


@jax_installed
def test_a_fused_sweep_records_each_point_as_its_own_run_and_resumes(data_dir, store, experiment, tmp_path):
    """4 points (2 learning rates x 2 seeds) in one group: one parent, one FINISHED child per point with its own
    epochs at steps 1 and 2 (once), its test metrics, objective and artifacts; the rerun of the same command runs
    nothing again."""
    from mlflow.tracking import MlflowClient

    from conftest import run_cli
    from src.tracking import names

    command = _sweep(data_dir, store, experiment, tmp_path / "sweep", "optimizer.learning_rate=1e-3,3e-3", "seed=1,2",
                     "tracking.log_model=true")
    result = run_cli(command, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Fused sweep: 4 point(s) in 1 group(s)" in log and "Group 1: training 4 member(s) together" in log
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    [parent] = [r for r in runs if names.PARENT_RUN not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(names.PARENT_RUN) == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert {(r.data.params["optimizer.learning_rate"], r.data.params["seed"]) for r in children} == {
        ("0.001", "1"), ("0.001", "2"), ("0.003", "1"), ("0.003", "2")}
    for child in children:
        assert child.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_loss")) == [1, 2]
        assert {"test_loss", "test_accuracy", "best_val_loss"} <= set(child.data.metrics)
        assert {"config.yaml", "predictions.csv", "plots"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
    assert len({r.data.metrics["val_loss"] for r in children}) == 4  # four different trainings
    plots = {Path(client.download_artifacts(r.info.run_id, "plots/history.png", str(tmp_path))).read_bytes()
             for r in children}  # drawn by the plot workers: each run its own
    assert len(plots) == 4
    import mlflow

    from src.data import datasets as data

    mlflow.set_tracking_uri(store)
    ds = data.load(compose([f"data_dir={data_dir}", "dataset.sha256=null", "dataset.validation_size=100"]).dataset,
                   data_dir)
    for child in children:  # each point's logged model holds its own weights: its recorded test accuracy again
        model = mlflow.keras.load_model(f"runs:/{child.info.run_id}/mnist_dense")
        accuracy = float(np.mean(model.predict(ds.test.x, verbose=0).argmax(-1) == ds.test.y))
        assert accuracy == pytest.approx(child.data.metrics["test_accuracy"], abs=1e-6), child.info.run_name

    again = run_cli(command, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 point(s) already FINISHED (skipped), 0 to run" in again.stdout + again.stderr
    assert len(client.search_runs([parent.info.experiment_id])) == 5  # nothing recorded twice

    # A point whose run did not finish and left no checkpoint (a FINISHED run's is gone) runs anew, as a new run
    # that names the one it retries.
    old = children[0]
    client.set_terminated(old.info.run_id, "FAILED")
    retry = run_cli(command, timeout=600)
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "3 point(s) already FINISHED (skipped), 1 to run" in retry.stdout + retry.stderr
    [new] = [r for r in client.search_runs([parent.info.experiment_id]) if r.info.run_id not in
             {parent.info.run_id, *(c.info.run_id for c in children)}]
    assert new.info.status == "FINISHED" and new.data.tags[names.SWEEP_RETRY_OF] == old.info.run_id
    assert new.data.tags[names.SWEEP_POINT] == old.data.tags[names.SWEEP_POINT]
    assert not any(names.SWEEP_RETRY_OF in c.data.tags for c in children)  # first runs retry nothing


def test_points_group_by_what_one_program_can_carry_and_the_log_says_why():
    from src.fused import launch as fused

    points = [compose([f"optimizer.learning_rate={lr}", f"seed={seed}", f"model.rate={rate}"])
              for rate in (0.0, 0.3) for lr in (1e-3, 3e-3) for seed in (1, 2)]
    groups, lines = fused.plan(points)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert lines[0] == "Fused sweep: 8 point(s) in 2 group(s)"
    assert "differing in optimizer.learning_rate, seed" in lines[1]
    assert "apart from the other group(s) by model.rate (Dropout's rate, fixed when compiled)" in lines[1]
    assert fused.plan(points[:1])[0] == [[0]]  # a single point: a group of one


def test_a_cpu_vmaps_as_many_members_as_its_cache_holds_a_gpu_all_of_them():
    from src.fused.launch import CPU_VMAP_BYTES, vmap_members

    mb = 2**20
    assert vmap_members(None, 64, 3 * mb, on_cpu=False) == 64
    assert vmap_members(None, 16, CPU_VMAP_BYTES // 4, on_cpu=True) == 4
    assert vmap_members(None, 16, CPU_VMAP_BYTES // 5, on_cpu=True) == 4  # 5 fit: 4 chunks of 4, not 5/5/5/1
    assert vmap_members(None, 7, CPU_VMAP_BYTES * 2, on_cpu=True) == 1  # one member over the cache: one at a time
    assert vmap_members(None, 3, 1, on_cpu=True) == 3
    assert vmap_members(8, 16, 3 * mb, on_cpu=False) == 8  # hydra.launcher.vmap_members, where it is given
    assert vmap_members(6, 16, 3 * mb, on_cpu=True) == 6  # 3 chunks: 6/6/4
    assert vmap_members(40, 16, 3 * mb, on_cpu=True) == 16


def test_a_group_is_split_into_programs_that_fit_the_budget():
    from src.fused import launch as fused

    # 10 MB of budget, 1 MB of data, members of 0.5 MB (x4 copies): 4 fit beside the data
    assert fused.capacity(10 * 2**20, 2**20, 2**19) == 4
    assert fused.capacity(2**20, 2**20, 2**19) == 1  # nothing fits: still one at a time
    assert fused.split(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]  # 3 programs, as even as can be
    assert fused.split(list(range(4)), 4) == [[0, 1, 2, 3]]


@jax_installed
def test_a_group_over_the_device_budget_runs_as_smaller_programs_and_says_so(data_dir, store, experiment, tmp_path):
    """A budget with room for two members beside the data: the 4-point group trains as 2 programs of 2."""
    import jax

    from src.training import compiled
    from src.data import datasets as data
    from src.fused import launch as fused, vmapped

    ds, build = _builder(data_dir)
    model = build(1, 1e-3)
    vmapped.Program.build(model, compiled.rows(ds.val))
    member = sum(v.nbytes for values in vmapped.Program.state_of(model) for v in values)
    budget = compiled.device_bytes(ds.train) + compiled.device_bytes(ds.val) + 2.5 * fused.MEMBER_COPIES * member
    fraction = budget / compiled.free_device_bytes(jax.devices("cpu")[0])
    from conftest import run_cli

    command = _sweep(data_dir, store, experiment, tmp_path / "sweep", "optimizer.learning_rate=1e-3,3e-3", "seed=1,2",
                     "trainer.epochs=1", f"hardware.device_data_budget={fraction:.3g}")
    result = run_cli(command, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Group 1 split into 2 programs of 2/2 members" in log and "do not fit beside the data" in log
    assert log.count("training 2 member(s) together") == 2


@pytest.mark.parametrize("bad, fix", [
    (["backend=tensorflow"], "Fix: add backend=jax"),
    (["backend=jax", "trainer.loop=fit"], "Fix: leave trainer.loop at auto"),
    (["backend=jax", "hardware.strategy=mirrored"], "Fix: hardware=gpu (one GPU) or hardware=auto"),
    (["backend=jax", "hydra/sweeper=optuna", "model.rate=interval(0.0,0.5)"],
     "Fix: search model.rate over a few values (hydra.sweeper.params: choice(...))"),
    (["backend=jax", "hydra.launcher.vmap_members=0"], "Fix: a whole number >= 1, or null"),
])
def test_the_fused_launcher_refuses_what_it_cannot_train_before_any_job(bad, fix, data_dir, store, experiment, tmp_path):
    from mlflow.tracking import MlflowClient

    from conftest import run_cli

    command = [c for c in _sweep(data_dir, store, experiment, tmp_path / "sweep", "seed=1,2") if c != "backend=jax"]
    result = run_cli([*command, *bad], timeout=300)
    assert result.returncode != 0 and fix in result.stderr, result.stderr[-2000:]
    found = MlflowClient(store).get_experiment_by_name(experiment)
    assert found is None or not MlflowClient(store).search_runs([found.experiment_id])  # nothing recorded


def _children(client, experiment) -> dict:
    """The sweep's child runs by (learning rate, seed)."""
    from src.tracking import names

    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {(r.data.params["optimizer.learning_rate"], r.data.params["seed"]): r for r in found
            if names.PARENT_RUN in r.data.tags}


def _history(client, run, key="val_loss") -> list[float]:
    points = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    assert [m.step for m in points] == list(range(1, len(points) + 1)), run.info.run_name  # each epoch once
    return [m.value for m in points]


# Tags whose values are the run's own (ids, times, folders, hosts), and the fused group's own two tags.
OWN_VALUES = ("mlflow.", "owner.", "heartbeat", "output_dir", "backup_dir", "sweep.", "fused.", "host")


def _record(client, run) -> dict:
    """What a run records, as comparable between two runs of one point: params (but trainer.loop, which the lone
    sweep sets to compiled, and the experiment's name), tag names (values too where they are not the run's own or
    the command's), metric names, artifacts."""
    tags = run.data.tags
    return {
        "params": {k: v for k, v in run.data.params.items() if k not in ("trainer.loop", "tracking.experiment_name")},
        "tags": sorted(k for k in tags if not k.startswith("fused.")),
        "tag values": {k: v for k, v in tags.items() if not k.startswith(OWN_VALUES) and k != "overrides"},
        # system metrics are sampled on a clock: a lone run of tiny data may end before its first sample
        "metrics": sorted(k for k in run.data.metrics if not k.startswith("system/")),
        "artifacts": sorted(_artifacts(client, run.info.run_id)),
    }


def _differences(a: dict, b: dict) -> dict:
    found = {}
    for field in a:
        x, y = a[field], b[field]
        if isinstance(x, dict):
            found[field] = {k: (x.get(k), y.get(k)) for k in set(x) | set(y) if x.get(k) != y.get(k)}
        else:
            found[field] = (sorted(set(x) - set(y)), sorted(set(y) - set(x)))
    return {k: v for k, v in found.items() if v and v != ([], [])}


def _artifacts(client, run_id, path=None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


@jax_installed
def test_each_fused_run_matches_its_point_run_alone_early_stopping_included(data_dir, store, tmp_path):
    """The same 4 points (Dropout on, early stopping with patience 1, up to 8 epochs) swept fused and swept with the
    basic launcher and trainer.loop=compiled: each point's recorded val_loss per epoch within 1e-3 and its test
    accuracy within 0.2 points, so each member stopped at its own epoch while the others went on."""
    from mlflow.tracking import MlflowClient

    from conftest import run_cli

    points = ["optimizer.learning_rate=3e-2,1e-3", "seed=1,2", "model.rate=0.3", "trainer.epochs=8",
              "trainer.early_stopping_patience=1"]
    fused = run_cli([*_sweep(data_dir, store, "fused", tmp_path / "fused"), *points], timeout=600)
    assert fused.returncode == 0, fused.stderr[-3000:]
    lone = [c for c in _sweep(data_dir, store, "lone", tmp_path / "lone") if c != "hydra/launcher=fused"]
    alone = run_cli([*lone, "trainer.loop=compiled", *points], timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]

    client = MlflowClient(store)
    fused_runs, lone_runs = _children(client, "fused"), _children(client, "lone")
    assert set(fused_runs) == set(lone_runs) and len(fused_runs) == 4
    lengths = set()
    for point, run in fused_runs.items():
        mine, theirs = _history(client, run), _history(client, lone_runs[point])
        assert len(mine) == len(theirs), point  # stopped after the same epoch
        assert mine == pytest.approx(theirs, abs=1e-3), point
        assert run.data.metrics["test_accuracy"] == pytest.approx(lone_runs[point].data.metrics["test_accuracy"],
                                                                  abs=0.002), point
        assert run.data.metrics["best_val_loss"] == pytest.approx(min(mine), abs=1e-6)
        # one run record for every launcher (src/training/record.py): the same params, tags, metrics, artifacts
        fused_record, lone_record = _record(client, run), _record(client, lone_runs[point])
        assert fused_record == lone_record, (point, _differences(fused_record, lone_record))
        lengths.add(len(mine))
    assert len(lengths) > 1 and min(lengths) < 8  # some member stopped early while another went on
    assert "early stopping after epoch" in fused.stdout + fused.stderr


@jax_installed
def test_a_member_whose_loss_turns_nan_fails_alone(data_dir, store, experiment, tmp_path):
    """SGD at learning rate 1e30 overflows the weights: that member's run FAILED with the NaN named, the sweep exits
    non-zero and prints how to continue it (with its launcher); its group-mate, trained after it, FINISHED."""
    from mlflow.tracking import MlflowClient

    from conftest import run_cli
    from src.tracking import names

    command = _sweep(data_dir, store, experiment, tmp_path / "sweep", "optimizer=sgd",
                     "optimizer.learning_rate=1e30,1e-2", "seed=1", "trainer.epochs=3")
    result = run_cli(command, timeout=600)
    assert result.returncode != 0  # the sweep reports its failed point
    log = result.stdout + result.stderr
    assert "Group 1: training 2 member(s) together" in log
    continued = log.split("Continue it (points already FINISHED are skipped, failed ones rerun) with:\n")[1]
    assert "hydra/launcher=fused" in continued.splitlines()[0]
    runs = _children(MlflowClient(store), experiment)
    good, bad = runs[("0.01", "1")], runs[("1e+30", "1")]
    assert good.info.status == "FINISHED" and bad.info.status == "FAILED"
    assert "nan" in bad.data.tags[names.FAILURE_REASON].lower()
    assert len(_history(MlflowClient(store), good)) == 3


@jax_installed
def test_sigterm_ends_every_member_killed_and_the_rerun_resumes_each_into_its_own_run(data_dir, store, experiment,
                                                                                       tmp_path):
    import signal

    from mlflow.tracking import MlflowClient

    from cli_runs import run, start, wait_for_epochs

    epochs = 150
    command = _sweep(data_dir, store, experiment, tmp_path / "sweep", "optimizer.learning_rate=1e-3,3e-3", "seed=1,2",
                     "trainer.epochs=2")
    command = [c for c in command if c != "trainer.epochs=2"] + [f"trainer.epochs={epochs}"]
    driver = start(command, tmp_path)
    try:
        wait_for_epochs(driver, tmp_path, 3, pattern="sweep/*/backup", timeout=300)
        driver.send_signal(signal.SIGTERM)
        output, _ = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode != 0, output[-3000:]
    assert "Resume the sweep" in output and "hydra/launcher=fused" in output.split("Resume the sweep")[1]
    client = MlflowClient(store)
    killed = _children(client, experiment)
    assert len(killed) == 4 and {r.info.status for r in killed.values()} == {"KILLED"}
    done = {point: len(_history(client, r)) for point, r in killed.items()}
    assert all(0 < n < epochs for n in done.values()), done

    again = run(["python", "-m", "src.train", *command], tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:]
    resumed = _children(client, experiment)
    assert {p: r.info.run_id for p, r in resumed.items()} == {p: r.info.run_id for p, r in killed.items()}
    for point, r in resumed.items():
        assert r.info.status == "FINISHED"
        assert len(_history(client, r)) == epochs  # every epoch once: the checkpoint had what MLflow had


@jax_installed
def test_a_killed_fused_study_continues_each_members_run_from_its_checkpoint(data_dir, store, tmp_path):
    """SIGKILL of a fused study's driver while its three trials train together: the rerun marks them FAIL and
    retries each as a new trial that continues its run from its checkpoint (the epochs it had reported to the new
    trial), the three again in one program; every run ends FINISHED with each epoch once."""
    import signal

    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    import cli_runs
    from src.sweeps import search

    epochs = 40
    command = [*_sweep(data_dir, store, "killed_fused_study", tmp_path / "sweep"), "hydra/sweeper=optuna",
               "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=3", "hydra.sweeper.pruner=none",
               "optimizer.learning_rate=interval(1e-4,1e-2)"]
    command = [c for c in command if c != "trainer.epochs=2"] + [f"trainer.epochs={epochs}"]
    driver = cli_runs.start(command, tmp_path)
    try:
        cli_runs.wait_for_epochs(driver, tmp_path, 3, pattern="sweep/*/backup", timeout=300)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        driver.kill()
    client = MlflowClient(store)
    killed = _trials(client, "killed_fused_study")
    assert sorted(killed) == [0, 1, 2] and {r.info.status for r in killed.values()} == {"RUNNING"}  # as a kill leaves them
    had = {n: len(_history(client, r)) for n, r in killed.items()}
    assert any(had.values()) and all(h < epochs for h in had.values()), had  # (a kill may beat a sending)

    again = cli_runs.run(["python", "-m", "src.train", *command], tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:]
    assert again.stdout.count("continuing its run from the checkpoint") == 3, again.stdout[-3000:]
    assert "Group 1: training 3 member(s) together" in again.stdout
    trials = optuna.load_study(study_name=search.STUDY_NAME, storage=search.storage(tmp_path / "sweep")).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE] * 3
    runs = _trials(client, "killed_fused_study")
    assert sorted(runs) == [3, 4, 5]  # the three runs, each now its retry's
    for retry in trials[3:]:
        old = retry.user_attrs[search.CONTINUES]
        assert retry.params == trials[old].params
        assert sorted(retry.intermediate_values) == list(range(1, epochs + 1))  # the replayed ones and the rest
        run_ = runs[retry.number]
        assert run_.info.run_id == killed[old].info.run_id and run_.info.status == "FINISHED"
        assert run_.data.tags["optuna.continues"] == str(old)
        steps = sorted(m.step for m in client.get_metric_history(run_.info.run_id, "val_loss"))
        assert steps == list(range(1, epochs + 1))  # every epoch once, across the kill


def test_a_member_that_stopped_is_still_checkpointed_when_the_writer_was_behind():
    """The writer takes the newest posted state: a member that finished its last epoch in an older post (early
    stopping) must still get that checkpoint, from its frozen values in the newer state."""
    import threading
    from types import SimpleNamespace as NS

    from src.fused import launch as fused
    from src.tracking import runs

    written = {}

    class Backup:
        def __init__(self, name):
            self.name = name

        def commit_arrays(self, epochs, state):
            written[self.name] = (len(epochs), state)

    class Outbox:
        def log_metrics(self, run_id, metrics):
            pass

    program = NS(member=lambda host, i: host[i])
    early, late = (NS(backup=Backup(n), outbox=Outbox(), run_id=n, epochs=[{}] * 4) for n in ("early", "late"))
    host = fused.HostWork(program)
    gate = threading.Event()
    runs.send_later(gate.wait)  # the writer is busy: both posts wait
    host.post(np.array([3.0, 3.0]), [(0, early, 3), (1, late, 3)], [])
    host.post(np.array([3.0, 4.0]), [(1, late, 4)], [])  # early stopped after epoch 3, frozen
    gate.set()
    host.drain()
    assert written["early"] == (3, 3.0) and written["late"] == (4, 4.0)



# An Optuna study trained fused: n_jobs trials at a time, one program per shape (model.units), the pruner told
# every member's epochs, an ended member's slot refilled. Learning rate 1e-7 stalls, 1e-3 learns (tests/test_search.py's space).
STUDY = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=3", "hydra.sweeper.pruner=median",
         "hydra.sweeper.n_startup_trials=2", "trainer.epochs=3",
         "optimizer.learning_rate=choice(1e-7,1e-3)", "model.units=choice([16],[32])"]


def _trials(client, experiment) -> dict:
    from src.tracking import names

    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {int(r.data.tags[names.OPTUNA_TRIAL]): r for r in found if names.OPTUNA_TRIAL in r.data.tags}


@jax_installed
def test_a_fused_study_trains_each_batch_together_and_its_pruner_freezes_members(data_dir, store, tmp_path):
    """6 trials, 3 at a time: asked at once and trained as one program per shape; a member its pruner stops is
    frozen there and its run ends as a pruned trial's does; each ended member's slot is taken by a newly asked
    trial of its shape (in the program of the trials it joins: their group tag); the same study with the basic
    launcher (trainer.loop=compiled) proposes the same trials and each trial's epochs agree with the fused
    member's."""
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from conftest import run_cli
    from src.sweeps import search
    from src.tracking import names

    fused = run_cli([*_sweep(data_dir, store, "fused_study", tmp_path / "fused", "trainer.epochs=3"), *STUDY],
                    timeout=600)
    out = fused.stdout + fused.stderr
    assert fused.returncode == 0, out[-3000:]
    assert out.count("Fused sweep: 3 point(s)") == 1, out[-3000:]  # three trials asked at once, trained together
    assert "takes job #" in out, out[-3000:]  # trials asked later took the slots of ended ones
    lone = [c for c in _sweep(data_dir, store, "lone_study", tmp_path / "lone") if c != "hydra/launcher=fused"]
    alone = run_cli([*lone, "trainer.loop=compiled", *STUDY], timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]

    study = optuna.load_study(study_name=search.STUDY_NAME, storage=search.storage(tmp_path / "fused"))
    lone_study = optuna.load_study(study_name=search.STUDY_NAME, storage=search.storage(tmp_path / "lone"))
    assert [t.params for t in study.trials] == [t.params for t in lone_study.trials]  # the same seed: the same asks
    client = MlflowClient(store)
    runs, lone_runs = _trials(client, "fused_study"), _trials(client, "lone_study")
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 6 and sorted(runs) == [t.number for t in done]
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    first = [n for n in (0, 1, 2) if runs[n].data.tags[names.FUSED_GROUP] == runs[0].data.tags[names.FUSED_GROUP]]
    assert pruned and not {t.number for t in pruned} & set(first)  # the first program had no ended trial to compare
    for t in done:
        run = runs[t.number]
        mine = _history(client, run)  # each epoch once
        assert run.info.status == "FINISHED" and len(mine) == len(t.intermediate_values), t.number
        if t.state == TrialState.PRUNED:  # frozen after the epoch its pruner stopped, the others went on
            assert len(mine) < 3 and run.data.tags["pruned"] == "true"
            assert run.data.tags["pruned_at_epoch"] == str(len(mine)) and "test_accuracy" in run.data.metrics
        else:
            assert len(mine) == 3 and "pruned" not in run.data.tags
        theirs = _history(client, lone_runs[t.number])
        n = min(len(mine), len(theirs))
        assert mine[:n] == pytest.approx(theirs[:n], abs=1e-3), t.number
        assert run.data.tags["optuna.param.model.units"] == lone_runs[t.number].data.tags["optuna.param.model.units"]
    groups = {}
    for t in done:
        groups.setdefault(runs[t.number].data.tags[names.FUSED_GROUP], []).append(t.number)
    assert any(max(g) >= 3 and min(g) < 3 for g in groups.values()), groups  # a later trial in an earlier program
    parent = [r for r in client.search_runs([client.get_experiment_by_name("fused_study").experiment_id])
              if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1, [r.info.run_name for r in parent]
    assert parent[0].data.tags.get("optuna.best_trial") == str(study.best_trial.number), (
        parent[0].data.tags, [(t.number, t.state.name, t.value) for t in study.trials], out[-2000:])
