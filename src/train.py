"""Train one model and record it in MLflow.

    python -m src.train                                   # the lab's MNIST dense net
    python -m src.train model=imdb_dropout                # IMDB dropout net (selects the IMDB dataset)
    python -m src.train backend=jax                       # the same on Keras's JAX backend
    python -m src.train -m optimizer.learning_rate=1e-2,1e-3,1e-4

`main` is Hydra's entry point: it gathers what the run needs from HydraConfig and calls `train`, a plain
function that tests and notebooks call with a composed config and a folder. `train` returns the best value
of `trainer.monitor` (default val_loss), so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import logging
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from . import backend, config, loop
from .errors import UserError

config.register()
log = logging.getLogger(__name__)


@dataclass
class Job:
    """How a run was started, for its MLflow record; Hydra's entry point fills it in, a notebook may leave it."""

    choices: dict = field(default_factory=dict)  # config-group choices (tags; checked against each YAML's name)
    overrides: list[str] = field(default_factory=list)  # the command line's overrides
    name: str | None = None  # the MLflow run name; None: the model's name
    num: int | None = None  # a multirun job's number
    sweep_dir: Path | None = None  # a multirun's folder, where its MLflow parent run is recorded
    backup_dir: Path | None = None  # set by `train`: the checkpoint folder, for the command that resumes


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    job = Job(
        choices=dict(hc.runtime.choices),
        overrides=list(hc.overrides.task),
        name=_run_name(hc),
        num=hc.job.num if multirun else None,
        sweep_dir=Path(hc.sweep.dir) if multirun else None,
    )
    try:
        return train(cfg, Path(hc.runtime.output_dir), job)
    except UserError as err:
        if multirun:
            raise  # Hydra marks this job failed and still runs the rest of the sweep
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (runs.Terminated)
        print("Interrupted: any MLflow run was ended KILLED, keeping the metrics logged so far.\n"
              f"Output folder: {Path(hc.runtime.output_dir).resolve()}", file=sys.stderr)
        if job.backup_dir and (job.backup_dir / "state.json").is_file():
            print(f"  checkpoint of the last finished epoch: {job.backup_dir}\n"
                  f"Resume it (the same MLflow run, from its last finished epoch) with:\n  {resume_command(job)}",
                  file=sys.stderr)
        sys.exit(130)


def identify(cfg, job: Job, backend_name: str, data_sha256: str, workdir: Path, device: str, loop_name: str,
             unfinished=None):
    """What a run is before it opens, for a lone run and a fused group's member alike: (its sweep's parent run id or
    None, its tags, its checkpoint `resume.Backup`). Sets `job.backup_dir`. `unfinished(parent_run_id)` gives the
    parent's children that did not finish, by point (default: a search for this point's; a fused group searches
    once for all its members)."""
    from . import manifest, names, provenance, resume, sweep

    parent_run_id, sweep_tags = sweep.parent(job.sweep_dir, job.overrides, job.num)
    if parent_run_id:  # the point's identity, by which a resumed sweep knows it is done (src/manifest.py)
        sweep_tags[names.SWEEP_POINT] = manifest.point_hash(cfg)
    # Checkpoint of the last finished epoch, in a folder a requeued SLURM job finds again.
    backup = resume.for_run(cfg, backend_name, data_sha256, workdir, job.num)
    job.backup_dir = backup.folder
    if parent_run_id and backup.run_id is None:  # a new child: a rerun point without a checkpoint links its old run
        point = sweep_tags[names.SWEEP_POINT]
        earlier = unfinished(parent_run_id) if unfinished else sweep.unfinished(parent_run_id, point)
        if point in earlier:
            sweep_tags[names.SWEEP_RETRY_OF] = earlier[point]
    tags = {**provenance.tags(job.choices, job.overrides, backend_name), **sweep_tags, names.DEVICE: device,
            names.LOOP_RESOLVED: loop_name, names.OUTPUT_DIR: str(workdir.resolve()), names.BACKUP_DIR: str(backup.folder)}
    return parent_run_id, tags, backup


def resume_command(job: Job) -> str:
    """The command line that resumes `job`: its overrides, with trainer.backup_dir naming its checkpoint.

    It starts with this interpreter's path: a bare `python` outside the activated venv has no Hydra."""
    kept = [o for o in job.overrides if o.lstrip("+~").split("=", 1)[0] != "trainer.backup_dir"]
    return shlex.join([sys.executable, "-m", "src.train", *kept, f"trainer.backup_dir={job.backup_dir}"])


def train(cfg: DictConfig, workdir: Path, job: Job | None = None) -> float:
    """Train the composed config `cfg`, writing into the folder `workdir`; return the best `trainer.monitor`."""
    job = job or Job()
    workdir = Path(workdir)
    config.validate(cfg, job.choices)
    chosen, why = backend.choose(cfg.backend)
    loop.check(cfg, chosen)
    backend.activate(chosen, cfg.hardware)
    log.info("Backend: %s (%s)", chosen.value, why)

    # Keras and MLflow load only now, after the backend is set: a refused config never waits for them.
    keras = backend.import_keras(chosen)
    import mlflow

    from . import batches, data, hardware, inputs, models, names, outbox, preflight, redaction, runs, search, store

    models.check(cfg.model, cfg.optimizer)
    preflight.check_folder(workdir, "output folder", preflight.OUTPUT_FIX)
    experiment_id = store.connect(store.tracking_uri(cfg.tracking.tracking_uri), config.experiment_name(cfg))

    keras.backend.clear_session()  # each multirun job starts from a clean state
    scope, device = hardware.setup(cfg.hardware, chosen)
    backend.set_random_seed(chosen, cfg.seed)
    ds = data.load(cfg.dataset, data.data_dir(cfg.data_dir))
    log.info("Data: %s (%s, sha256 %s)", ", ".join(f"{k} {n}" for k, n in ds.sizes.items()), ds.path, ds.sha256[:12])
    config.check_fits(cfg, ds.sizes["train"])

    resolved = loop.resolve(cfg, chosen, ds)
    log.info("Training loop: %s (%s)", resolved.loop.value, resolved.why)

    parent_run_id, run_tags, backup = identify(cfg, job, chosen.value, ds.sha256, workdir, device, resolved.loop.value)
    # Said now, not at the end: after a kill -9 nothing else tells which folder holds what to resume.
    log.info("Output folder: %s\n  checkpoint of the last finished epoch: %s\n  if this run dies, resume it with: %s",
             workdir.resolve(), backup.folder, resume_command(job))
    # Records the store does not take (a server lost mid-run) are kept here, to import later.
    kept = outbox.Outbox(workdir / outbox.FILENAME)
    system_metrics = cfg.tracking.system_metrics_interval if cfg.tracking.system_metrics else None
    trial = search.JobTrial.of_job(job.sweep_dir, job.num)  # an Optuna sweep's job: report each epoch, maybe prune
    if trial is not None:
        run_tags.update(trial.tags())
    with runs.run(
        experiment_id, job.name or cfg.model.name, run_tags, parent_run_id, resume_run_id=backup.run_id, outbox=kept,
        system_metrics=system_metrics,
    ) as run:
        backup.record_run(run.info.run_id)
        ui = store.ui_hint(mlflow.get_tracking_uri(), experiment_id, run.info.run_id)
        log.info(ui)
        # the file's sha256 per split: the UI's Dataset column
        kept.log_inputs(run.info.run_id, inputs.records(cfg.dataset.name, ds.path, ds.sha256, ds.sizes))
        runs.log_params(run, {**redaction.params(cfg), names.BACKEND: chosen.value})  # a resumed run keeps its first values
        with scope:
            model = models.build_model(cfg.model, ds.spec)
            model.compile(
                optimizer=models.build_optimizer(cfg.optimizer),
                loss=ds.spec.loss,
                metrics=["accuracy"],
                jit_compile="auto" if cfg.hardware.jit_compile is None else cfg.hardware.jit_compile,
                steps_per_execution=cfg.hardware.steps_per_execution,
            )
            initial_epoch = backup.restore(model)  # 0 unless resuming
        model.summary(print_fn=lambda line, **_: log.info(line))

        training = loop.trainer(resolved, model, ds, cfg)  # Keras fit, or compiled epochs on JAX: the same interface
        found = _callbacks(cfg, run.info.run_id, backup, kept, trial)
        try:
            this_start = training.fit(cfg.trainer.epochs, initial_epoch, found)
        finally:
            backup.wait()  # its writer thread's last epoch on disk, also after Ctrl-C (src/resume.py)
        _raise_on_nan(this_start, cfg)
        if trial is not None and trial.pruned_at is not None:  # stopped, not failed: the run ends FINISHED
            kept.set_tag(run.info.run_id, names.PRUNED, "true")
            kept.set_tag(run.info.run_id, names.PRUNED_AT_EPOCH, str(trial.pruned_at))
        history = backup.history  # every epoch, also those before a requeue

        test = training.evaluate("test")
        objective = config.objective(history[cfg.trainer.monitor], cfg.trainer.monitor)
        runs.log_final_metrics(kept, run.info.run_id, {**{f"test_{k}": v for k, v in test.items()},
                                                        names.objective(cfg.trainer.monitor): objective})
        log.info("Test: %s", ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
        predictions = _predictions(model, batches.first(ds.test, 10), ds.test.y[:10])
        log.info("First 10 test predictions:\n%s", predictions)
        _log_artifacts(cfg, history, predictions, model, workdir, kept, run.info.run_id)
    backup.discard()  # the run is FINISHED: nothing left to resume
    log.info("Run %s FINISHED. %s", run.info.run_id, ui)

    return float(objective)


def _callbacks(cfg, run_id: str, backup, kept, trial=None) -> list:
    import keras

    from . import callbacks

    # The backup commits an epoch before MLflow logs it: see src/resume.py for why this order.
    found = [
        callbacks.StopOnSignal(),
        keras.callbacks.TerminateOnNaN(),
        backup,
        callbacks.MLflowMetrics(run_id, finished_epochs=backup.epochs, outbox=kept, committed=backup.committed),
    ]
    if cfg.trainer.early_stopping_patience is not None:
        found.append(
            keras.callbacks.EarlyStopping(
                monitor=cfg.trainer.monitor,
                patience=cfg.trainer.early_stopping_patience,
                restore_best_weights=True,
                verbose=1,
            )
        )
    if trial is not None:  # last: the epoch is backed up and logged before the pruner may stop training
        found.append(callbacks.ReportToTrial(trial, cfg.trainer.monitor, cfg.trainer.epochs))
    return found


class Diverged(UserError, FloatingPointError):
    """The loss became NaN or infinite."""


def _raise_on_nan(history: dict, cfg) -> None:
    import numpy as np

    losses = history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise Diverged(
            f"loss became NaN at epoch {len(losses)}: training diverged. "
            f"Fix: lower optimizer.learning_rate (now {cfg.optimizer.learning_rate})."
        )


def _predictions(model, x, y) -> str:
    """The first test samples as CSV: true label, predicted label, confidence."""
    import numpy as np

    probs = np.asarray(model.predict(x, verbose=0))
    if probs.shape[-1] == 1:  # binary: probability of the positive class
        predicted = (probs[:, 0] > 0.5).astype(int)
        confidence = np.where(predicted == 1, probs[:, 0], 1 - probs[:, 0])
    else:
        predicted, confidence = probs.argmax(-1), probs.max(-1)
    rows = [f"{i},{int(t)},{p},{c:.4f}" for i, (t, p, c) in enumerate(zip(y, predicted, confidence))]
    return "\n".join(["index,label,predicted,confidence", *rows])


def plot_title(cfg) -> str:
    return f"{cfg.model.name} on {cfg.dataset.name}"


def _log_artifacts(cfg, history, predictions, model, workdir: Path, kept, run_id: str, plot=None) -> None:
    """Written to a temporary folder first, so a failure never leaves a half-written artifact set. `plot(path)`
    writes the history figure there when it is drawn elsewhere (the fused launcher's plot workers)."""
    from . import plots, redaction

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.yaml").write_text(redaction.config_yaml(cfg))
        (tmp / "predictions.csv").write_text(predictions + "\n")
        figure = tmp / "plots" / "history.png"
        if plot is None:
            plots.history(history, figure, title=plot_title(cfg))
        else:
            plot(figure)
        if (workdir / ".hydra").is_dir():  # scrubbed copies: the command line may hold a secret
            redaction.hydra_files(workdir / ".hydra", tmp / "hydra")
        kept.log_artifacts(run_id, tmp)
    if cfg.tracking.log_model:
        _log_model(model, kept, run_id)


def _log_model(model, kept, run_id: str) -> None:
    """The model through MLflow's Keras flavour, named after the model option (its Keras name): "Logged models" in
    the UI, mlflow.keras.load_model("runs:/<id>/<model name>"), e.g. runs:/<id>/mnist_dense.

    A store that does not take it gets the same MLflow model folder as the run's <model name>/ artifacts through
    the outbox (kept on disk until imported); runs:/<id>/<model name> then loads it from there.
    """
    import mlflow

    # explicit requirements: inferring them would start a subprocess that imports the backend again
    requirements = mlflow.keras.get_default_pip_requirements()
    try:
        mlflow.keras.log_model(model, name=model.name, pip_requirements=requirements)
        return
    except Exception as err:  # MlflowException from an unreachable server, OSError from an artifact store
        log.warning("MLflow did not take the model (%s: %s); keeping it for the outbox", type(err).__name__,
                    str(err).splitlines()[0][:300] if str(err) else "")
    with tempfile.TemporaryDirectory() as tmp:  # the outbox copies what it could not upload beside its file
        mlflow.keras.save_model(model, f"{tmp}/{model.name}", pip_requirements=requirements)
        kept.log_artifacts(run_id, Path(tmp) / model.name, model.name)


# Overrides that say where things go, not what is trained: left out of run names.
NOT_IN_RUN_NAMES = ("tracking.", "data_dir", "trainer.backup_dir", "hydra.", "model=", "backend")


def _run_name(hc) -> str:
    """The model option; for a sweep job, with the job's own overrides of what it trains (mnist_dense
    optimizer.learning_rate=0.01), never a store URI or a folder."""
    from .redaction import redact

    name = hc.runtime.choices.get("model", "run")
    if hc.mode != RunMode.MULTIRUN:
        return name
    from .sweep import varied

    kept = varied(Path(hc.sweep.dir), list(hc.overrides.task))  # the keys the sweep varies, when it recorded them
    if kept is None:
        kept = [o for o in hc.overrides.task if not o.lstrip("+~").startswith(NOT_IN_RUN_NAMES)]
    return redact(" ".join([name, *(o for o in kept if not o.startswith("model="))]))[:250]


if __name__ == "__main__":
    if hint := config.unquoted_non_ascii(sys.argv[1:]):  # before Hydra, whose own error does not say why
        print(f"Error: {hint}", file=sys.stderr)
        sys.exit(2)
    main()
