"""hydra/sweeper=optuna (src/sweeps/search.py): a pruned study of real training jobs, its resume, its refusals.

The studies run `python -m src.train -m hydra/sweeper=optuna ...` with the basic launcher on the synthetic data;
the same with hydra/launcher=slurm is in test_slurm.py.
"""

from __future__ import annotations

import json
import signal
import time

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import open_dict
from optuna.trial import TrialState

import cli_runs
from conftest import base_overrides, run_cli
from src.sweeps import search, sweep

EPOCHS = 3
# Learning rate 1e-7 stalls (the validation loss stays near ln 10), 1e-3 learns the synthetic digits in one epoch:
# Seed 42 samples 1e-3, 1e-7, 1e-3, 1e-7, 1e-7, 1e-3. The median pruner prunes from the fifth trial on, against the
# median of the first four (two learning, two stalled: halfway between): the stalled fifth is pruned, the learning
# sixth is not. (After more learning trials the median is a learning one's, and a learning trial a hair behind it is
# pruned too: right, but not a test's certainty.)
# The dropout rate varies the finished trials' losses (parameter importances need that).
SPACE = ["optimizer.learning_rate=choice(1e-7,1e-3)", "model.rate=interval(0.0,0.5)"]
STUDY = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=6", "hydra.sweeper.pruner=median",
         "hydra.sweeper.n_startup_trials=4", f"trainer.epochs={EPOCHS}",
         "trainer.verbose=0", "tracking.log_model=false", "tracking.system_metrics=false", *SPACE]


def sweep_args(data_dir, store, experiment, sweep_dir, *extra):
    found = [o for o in base_overrides(data_dir, store, experiment) if not o.startswith("trainer.epochs")]
    return ["-m", *found, *STUDY, f"hydra.sweep.dir={sweep_dir}", *extra]


def load(sweep_dir):
    return optuna.load_study(study_name=search.STUDY_NAME, storage=search.storage(sweep_dir))


def points(seed: int, n: int = 6) -> list[dict]:
    """The first `n` points the sweeper's sampler proposes for SPACE with `seed` (TPE samples its first 10 trials
    at random: they do not depend on the results told)."""
    study = optuna.create_study(sampler=search.build_sampler("tpe", seed))
    found = []
    for _ in range(n):
        trial = study.ask(search.space({}, SPACE).distributions)
        found.append(trial.params)
        study.tell(trial, 0.0)
    return found


def runs_of(experiment):
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    return parents[0], [r for r in runs if r is not parents[0]]


def steps(run_id: str, key: str = "val_loss") -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, key))


def test_a_pruned_study_stops_stalled_trials_at_the_end_of_an_epoch(data_dir, store, experiment, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(sweep_args(data_dir, store, experiment, sweep_dir))
    assert result.returncode == 0, result.stderr[-3000:]

    study = load(sweep_dir)
    trials = study.trials
    assert [t.params for t in trials] == points(seed=42)  # the config's seed drives the sampler
    assert points(seed=42) != points(seed=43)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(pruned) + len(complete) == 6 and pruned, [(t.number, t.state, t.params) for t in trials]
    assert [t.params["optimizer.learning_rate"] for t in trials] == [1e-3, 1e-7, 1e-3, 1e-7, 1e-7, 1e-3]
    assert [t.number for t in pruned] == [4]
    assert all(len(t.intermediate_values) == 1 for t in pruned)  # at the end of their first epoch
    assert all(len(t.intermediate_values) < EPOCHS for t in pruned)
    assert all(len(t.intermediate_values) == EPOCHS for t in complete)

    mlflow.set_tracking_uri(store)
    parent, children = runs_of(experiment)
    by_trial = {int(c.data.tags["optuna.trial"]): c for c in children}
    assert sorted(by_trial) == list(range(6))  # one MLflow child per trial
    for t in trials:
        run = by_trial[t.number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.param.optimizer.learning_rate"] == f"{t.params['optimizer.learning_rate']:.4g}"
        ran = len(t.intermediate_values)
        assert steps(run.info.run_id) == list(range(1, ran + 1))  # each epoch it ran, logged once
        if t.state == TrialState.PRUNED:
            assert run.data.tags["pruned"] == "true" and run.data.tags["pruned_at_epoch"] == str(ran)
            assert "test_accuracy" in run.data.metrics  # a pruned run is a finished run: its metrics kept
        else:
            assert "pruned" not in run.data.tags

    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.best_trial"] == str(study.best_trial.number)
    assert json.loads(parent.data.tags["optuna.best_params"]) == study.best_trial.params
    artifacts = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "optuna")}
    assert artifacts == {"optuna/optuna_summary.md", "optuna/optimization_history.png",
                         "optuna/param_importances.png"}
    text = (sweep_dir / search.SUMMARY_FILE).read_text()
    ran = sum(len(t.intermediate_values) for t in trials)
    assert f"Epochs run: {ran} of {6 * EPOCHS}" in text


def test_a_killed_study_resumes_to_n_trials_in_its_sweep_folder(data_dir, store, experiment, tmp_path):
    """SIGKILL of the driver while its third trial trains (an epoch reported): the rerun marks that trial FAIL and
    retries its point first as a new trial that continues its run from its checkpoint, then asks new points."""
    sweep_dir = tmp_path / "sweep"
    args = sweep_args(data_dir, store, experiment, sweep_dir, *cli_runs.SLOW)
    driver = cli_runs.start(args, tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:  # two trials finished, the third one epoch in
        if (sweep_dir / search.JOURNAL_FILE).exists():
            trials = load(sweep_dir).get_trials(deepcopy=False)
            if len(trials) == 3 and trials[2].state == TrialState.RUNNING and trials[2].intermediate_values:
                break
        time.sleep(0.2)
    assert driver.poll() is None, driver.stdout.read()[-3000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait()

    again = cli_runs.run(["python", "-m", "src.train", *args], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "Trial 2 was left running by a previous driver: marked FAIL, its point is tried again, continuing its run" \
        in again.stdout
    trials = load(sweep_dir).trials
    assert [t.state for t in trials][2] == TrialState.FAIL  # the killed trial, ended by the rerun
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6
    assert len(trials) == 7  # two kept, the killed one retried, four more
    # The rerun tried the killed point again first, then points it never proposed: the sampler's sequence did not
    # start over (seeded alike at each start, the rerun's trials 3, 4, 5 were trials 0, 1, 2 again).
    rates = [t.params["model.rate"] for t in trials]
    assert rates[3] == rates[2]
    assert len(set(rates)) == 6, rates
    assert search.sampler_seed(42, 0) == 42 and search.sampler_seed(42, 3) not in (42, search.sampler_seed(42, 4))
    # The retry continued trial 2's run: the epochs its checkpoint had were reported to it, the rest it trained.
    retry = trials[3]
    assert retry.user_attrs[search.CONTINUES] == 2 and retry.state == TrialState.COMPLETE  # a startup trial
    assert sorted(retry.intermediate_values) == list(range(1, EPOCHS + 1))
    mlflow.set_tracking_uri(store)
    parent, children = runs_of(experiment)  # the rerun continued the one parent
    assert parent.info.status == "FINISHED"
    by_trial = {int(c.data.tags["optuna.trial"]): c for c in children}
    assert sorted(by_trial) == [0, 1, 3, 4, 5, 6] and len(children) == 6  # trial 2's run is trial 3's now
    assert {c.info.status for c in children} == {"FINISHED"}
    assert by_trial[3].data.tags["optuna.continues"] == "2"
    assert steps(by_trial[3].info.run_id) == list(range(1, EPOCHS + 1))  # every epoch once, across the kill
    assert by_trial[3].data.tags["backup_dir"] == retry.user_attrs[search.BACKUP]


# -- refusals: before any job starts, nothing recorded -----------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ("hydra.sweeper.pruner=hyperband", "unknown pruner 'hyperband'; choose from ['median', 'none', "
                                           "'successive_halving']. Fix: hydra.sweeper.pruner=median"),
        ("hydra.sweeper.sampler=cmaes", "unknown sampler 'cmaes'; choose from ['random', 'tpe']"),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0: must be >= 1"),
        ("optimizer.learning_rate=interval(0.1,0.01)",
         "'optimizer.learning_rate=interval(0.1,0.01)' cannot be sampled"),
    ],
)
def test_a_sweep_that_cannot_run_is_refused_before_anything_is_recorded(
    data_dir, store, experiment, tmp_path, bad, message
):
    sweep_dir = tmp_path / "sweep"
    started = time.monotonic()
    result = run_cli([*sweep_args(data_dir, store, experiment, sweep_dir), bad], timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Error: the Optuna sweep cannot run" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (sweep_dir / search.JOURNAL_FILE).exists() and not (sweep_dir / sweep.PARENT_FILE).exists()
    mlflow.set_tracking_uri(store)
    assert mlflow.search_runs(experiment_names=[experiment], output_format="list") == []
    assert "Backend:" not in result.stdout + result.stderr  # no job started
    assert time.monotonic() - started < 60


def optuna_config(*overrides, params: dict | None = None, sweeper: str = "hydra/sweeper=optuna"):
    """The composed config with its `hydra` node, as the sweep's driver sees it, and its task overrides; `params`
    go into hydra.sweeper.params (by default SPACE's)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from conftest import ROOT
    from src import config

    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[sweeper, *overrides] if sweeper else list(overrides),
                            return_hydra_config=True)
    OmegaConf.set_readonly(cfg, False)
    with open_dict(cfg):
        cfg.hydra.sweeper.params.update(dict(p.split("=", 1) for p in SPACE) if params is None else params)
    return cfg, list(cfg.hydra.overrides.task)


@pytest.mark.parametrize(
    "params, arguments, message",
    [
        ({"model.rate": "interval(0.5"}, [], "'model.rate=interval(0.5' is not Hydra override syntax"),
        ({"optimizer.learning_rate": "tag(log, interval(0, 0.1))"}, [],
         "'optimizer.learning_rate=tag(log, interval(0, 0.1))' cannot be sampled"),
        ({"optimizer.learnin_rate": "interval(1e-4, 1e-1)"}, [], "optimizer.learnin_rate: no such key"),
        ({}, ["optimizer.learning_rate=0.001"], "nothing to search"),
        (None, ["hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0: must be >= 1"),
        (None, ["hydra.sweeper.pruner=successive_halving", "hydra.sweeper.reduction_factor=1"], "reduction_factor"),
    ],
)
def test_search_spaces_that_cannot_be_sampled_are_refused_with_the_fix(params, arguments, message):
    if arguments and arguments[0].startswith("hydra."):  # a setting of the sweeper, with SPACE to search
        cfg, task = optuna_config(*arguments)
        arguments = []
    else:
        cfg, task = optuna_config(params=params)
    with pytest.raises(search.SearchError, match="Fix") as refused:
        search.check(cfg, arguments if arguments else task)
    assert message in str(refused.value)


def test_the_search_space_syntax_is_hydra_optuna_sweepers():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    found = search.space(
        {"optimizer.learning_rate": "tag(log, interval(1e-5, 1e-1))", "model.units": "choice([128],[512])",
         "trainer.batch_size": "range(32, 129, 32)", "model.rate": "interval(0.0, 0.5)", "seed": "7"},
        ["trainer.epochs=2,4"],  # the command line's sweeps join (and win over) the params
    )
    assert found.distributions == {
        "optimizer.learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
        "model.units": CategoricalDistribution(["[128]", "[512]"]),
        "trainer.batch_size": IntDistribution(32, 128, step=32),
        "model.rate": FloatDistribution(0.0, 0.5),
        "trainer.epochs": CategoricalDistribution([2, 4]),
    }
    assert found.fixed == ["seed=7"]
    assert found.overrides({"model.units": "[512]"}) == ["seed=7", "model.units=[512]"]


@pytest.mark.parametrize("monitor, direction", [("val_loss", "MINIMIZE"), ("val_accuracy", "MAXIMIZE")])
def test_the_study_optimises_trainer_monitor_in_its_direction(tmp_path, monitor, direction):
    cfg, _ = optuna_config(f"trainer.monitor={monitor}", f"hydra.sweep.dir={tmp_path}")
    study = search.Search(cfg, launch=None, in_process=True).study
    assert study.direction.name == direction
    assert (tmp_path / search.JOURNAL_FILE).exists()  # the study lives in the sweep folder


def test_the_preset_searches_rate_units_and_dropout_with_asha():
    cfg, task = optuna_config("+experiment=mnist_optuna", params={}, sweeper="")
    found = search.check(cfg, task)
    assert set(found.distributions) == {"optimizer.learning_rate", "model.units", "model.rate"}
    assert found.distributions["optimizer.learning_rate"].log
    assert type(search.build_pruner(cfg.hydra.sweeper.pruner, search.pruner_settings(cfg.hydra.sweeper))).__name__ \
        == "SuccessiveHalvingPruner"


def test_a_study_is_not_continued_under_another_monitor(tmp_path):
    first, _ = optuna_config("trainer.monitor=val_loss", f"hydra.sweep.dir={tmp_path}")
    search.Search(first, launch=None, in_process=True)
    other, _ = optuna_config("trainer.monitor=val_accuracy", f"hydra.sweep.dir={tmp_path}")
    with pytest.raises(search.SearchError, match="(?s)optimises val_loss.*Fix: trainer.monitor=val_loss"):
        search.Search(other, launch=None, in_process=True)


def _study_with_a_third_trial_cut(tmp_path, newline: bool):
    """Two told trials, then the records of a third asked trial cut in the middle of their first line, as a crash
    during Optuna's append leaves them (with or without the newline of a write that the disk saw half of)."""
    cfg, _ = optuna_config(f"hydra.sweep.dir={tmp_path}")
    study = search.Search(cfg, launch=None, in_process=True).study
    for value in (0.3, 0.2):
        study.tell(study.ask(), value)
    journal = tmp_path / search.JOURNAL_FILE
    whole = journal.read_bytes()
    study.ask()
    added = journal.read_bytes()[len(whole):]
    journal.write_bytes(whole + added[: len(added.split(b"\n")[0]) // 2] + (b"\n" if newline else b""))
    return cfg, journal, whole


@pytest.mark.parametrize("newline", [False, True], ids=["cut", "cut-then-newline"])
def test_a_journal_record_cut_short_by_a_crash_is_set_aside_and_the_study_resumes(tmp_path, caplog, newline):
    cfg, journal, whole = _study_with_a_third_trial_cut(tmp_path, newline)
    with caplog.at_level("WARNING"):
        study = search.Search(cfg, launch=None, in_process=True).study
    assert "cut short by a crash" in caplog.text and f"{journal}.torn" in caplog.text
    torn = (tmp_path / f"{search.JOURNAL_FILE}.torn").read_bytes()
    assert torn.endswith(b"\n") and all(json.loads(line) for line in journal.read_bytes().splitlines())
    assert journal.read_bytes().startswith(whole)  # the two trials' records, byte for byte (then the reopening's)
    study.tell(study.ask(), 0.1)  # appended after the torn piece was gone: readable again
    assert [t.value for t in load(tmp_path).trials] == [0.3, 0.2, 0.1]


def test_a_journal_damaged_before_its_last_record_is_refused_with_the_way_to_keep_the_rest(tmp_path):
    import subprocess

    cfg, journal, whole = _study_with_a_third_trial_cut(tmp_path, newline=False)
    lines = whole.split(b"\n")
    journal.write_bytes(b"\n".join([*lines[:3], b"{garbage", *lines[4:]]))
    with pytest.raises(search.SearchError, match=f"line 4 of {len(lines) - 1}, is not a journal record") as err:
        search.Search(cfg, launch=None, in_process=True)
    fix = str(err.value).split("Fix: keep the 3 records before it (they hold the trials up to there): ")[1]
    subprocess.run(["bash", "-c", fix.split("; or")[0]], check=True)  # the fix as printed
    assert load(tmp_path).trials is not None and journal.read_bytes() == b"\n".join(lines[:3]) + b"\n"


FINITE = {"optimizer.learning_rate": "choice(0.001,0.01,0.1)", "trainer.batch_size": "choice(32,64)"}


def fake_launch(trained: list):
    """A launcher that trains nothing: records each trial's overrides and returns a value from them."""
    from hydra.core.utils import JobReturn, JobStatus

    def launch(overrides, number):
        trained.append(tuple(o for o in overrides if o.split("=")[0] in FINITE))
        return JobReturn(status=JobStatus.COMPLETED, _return_value=float(len(trained)))

    return launch


def test_a_space_of_finite_choices_trains_no_point_twice_while_untried_ones_remain(tmp_path, caplog):
    """Six points, six trials over a resumption: TPE's random start-up draws repeat (without the check, this seed
    trained 3 distinct points in 6 trials)."""
    trained: list = []
    first, _ = optuna_config(f"hydra.sweep.dir={tmp_path}", "hydra.sweeper.n_trials=3", params=FINITE)
    with caplog.at_level("INFO"):
        search.Search(first, launch=fake_launch(trained), in_process=True).run()
        grown, _ = optuna_config(f"hydra.sweep.dir={tmp_path}", "hydra.sweeper.n_trials=6", params=FINITE)
        study = search.Search(grown, launch=fake_launch(trained), in_process=True)
        study.run()
    assert len(trained) == 6 and len(set(trained)) == 6, trained  # the whole space, each point once
    repeats = [t for t in study.study.trials if search.REPEAT_OF in t.user_attrs]
    assert all(t.state == TrialState.FAIL and not t.intermediate_values for t in repeats)
    assert len(repeats) == caplog.text.count("again: not trained")
    assert "(repeat of" in search.summary(study.study, 6) or not repeats

    more, _ = optuna_config(f"hydra.sweep.dir={tmp_path}", "hydra.sweeper.n_trials=8", params=FINITE)
    search.Search(more, launch=fake_launch(trained), in_process=True).run()
    assert len(trained) == 8  # every point tried: the sampler may repeat one now
