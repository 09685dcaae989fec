"""A sweep grows in its own folder: an Optuna study's n_trials is its total budget (raised: the same study and parent run
on; not raised: the study is complete), a grid's swept values may grow (only the new points run); anything else
changed is refused, showing the difference."""

from __future__ import annotations

import mlflow
import optuna
from optuna.trial import TrialState

from conftest import base_overrides, run_cli
from src.sweeps import search

STUDY = ["hydra/sweeper=optuna", "hydra.sweeper.pruner=none", "trainer.epochs=1", "trainer.verbose=0",
         "tracking.log_model=false", "tracking.system_metrics=false", "model.rate=interval(0.0,0.5)"]


def study_args(data_dir, store, experiment, sweep_dir, n_trials, *extra):
    found = [o for o in base_overrides(data_dir, store, experiment) if not o.startswith("trainer.epochs")]
    return ["-m", *found, *STUDY, f"hydra.sweep.dir={sweep_dir}", f"hydra.sweeper.n_trials={n_trials}", *extra]


def runs_of(experiment):
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in runs if r not in parents]


def test_a_study_grows_to_a_larger_n_trials_and_a_smaller_one_says_it_is_complete(data_dir, store, experiment, tmp_path):
    sweep_dir = tmp_path / "sweep"
    first = run_cli(study_args(data_dir, store, experiment, sweep_dir, 2))
    assert first.returncode == 0, first.stderr[-3000:]
    grown = run_cli(study_args(data_dir, store, experiment, sweep_dir, 4))
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert "grows: only in that sweep: hydra.sweeper.n_trials=2; only in this command: hydra.sweeper.n_trials=4" in (
        grown.stdout + grown.stderr)
    study = optuna.load_study(study_name=search.STUDY_NAME, storage=search.storage(sweep_dir))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4  # two more, not four
    assert len({t.params["model.rate"] for t in study.trials}) == 4
    mlflow.set_tracking_uri(store)
    parents, children = runs_of(experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent, reopened
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == [0, 1, 2, 3]

    done = run_cli(study_args(data_dir, store, experiment, sweep_dir, 3))
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert "The study is complete: 4 trials finished, hydra.sweeper.n_trials=3." in said
    assert f"Best: trial {study.best_trial.number}," in said
    assert len(runs_of(experiment)[1]) == 4  # nothing trained

    changed = run_cli(study_args(data_dir, store, experiment, sweep_dir, 5, "hydra.sweeper.sampler=random"))
    assert changed.returncode != 0
    assert "belongs to another sweep" in changed.stdout + changed.stderr
    assert "Changed: only in this command: hydra.sweeper.sampler=random" in changed.stdout + changed.stderr
    space = [o.replace("interval(0.0,0.5)", "interval(0.0,0.4)") for o in study_args(data_dir, store, experiment,
                                                                                      sweep_dir, 5)]
    changed = run_cli(space)
    assert changed.returncode != 0
    assert ("Changed: only in that sweep: model.rate=interval(0.0,0.5); only in this command: "
            "model.rate=interval(0.0,0.4)") in changed.stdout + changed.stderr
    assert len(runs_of(experiment)[1]) == 4


def test_a_grid_grows_by_its_swept_values_and_runs_only_the_new_points(data_dir, store, experiment, tmp_path):
    sweep_dir = tmp_path / "sweep"
    found = [o for o in base_overrides(data_dir, store, experiment) if not o.startswith("trainer.epochs")]
    args = ["-m", *found, "trainer.epochs=1", "trainer.verbose=0", "tracking.log_model=false",
            "tracking.system_metrics=false", f"hydra.sweep.dir={sweep_dir}"]
    first = run_cli([*args, "seed=1,2"])
    assert first.returncode == 0, first.stderr[-3000:]
    grown = run_cli([*args, "seed=1,2,3"])
    assert grown.returncode == 0, grown.stderr[-3000:]
    mlflow.set_tracking_uri(store)
    parents, children = runs_of(experiment)
    assert len(parents) == 1
    assert sorted(c.data.params["seed"] for c in children) == ["1", "2", "3"]  # 1 and 2 once each: skipped
    changed = run_cli([*args, "seed=1,2,3", "optimizer.learning_rate=0.01"])
    assert changed.returncode != 0
    assert "Changed: only in this command: optimizer.learning_rate=0.01" in changed.stdout + changed.stderr
