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
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from . import config, preflight
from .errors import UserError
from .paths import CHECKPOINT_STATE
from .training import backend, loop
from .training.job import Job, resume_command

config.register()
log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    job = Job.of(hc)
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
        if job.backup_dir and (job.backup_dir / CHECKPOINT_STATE).is_file():
            print(f"  checkpoint of the last finished epoch: {job.backup_dir}\n"
                  f"Resume it (the same MLflow run, from its last finished epoch) with:\n  {resume_command(job)}",
                  file=sys.stderr)
        sys.exit(130)


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

    from .data import datasets
    from .sweeps import search
    from .tracking import names, outbox, runs, store
    from .training import hardware, models, record  # Keras: imported after the backend is chosen

    models.check(cfg.model, cfg.optimizer)
    preflight.check_folder(workdir, "output folder", preflight.OUTPUT_FIX)
    experiment_id = store.connect(store.tracking_uri(cfg.tracking.tracking_uri), config.experiment_name(cfg))

    keras.backend.clear_session()  # each multirun job starts from a clean state
    scope, device = hardware.setup(cfg.hardware, chosen)
    backend.set_random_seed(chosen, cfg.seed)
    ds = datasets.load(cfg.dataset, datasets.data_dir(cfg.data_dir))
    log.info("Data: %s (%s, sha256 %s)", ", ".join(f"{k} {n}" for k, n in ds.sizes.items()), ds.path, ds.sha256[:12])
    config.check_fits(cfg, ds.sizes["train"])

    resolved = loop.resolve(cfg, chosen, ds)
    log.info("Training loop: %s (%s)", resolved.loop.value, resolved.why)

    parent_run_id, run_tags, backup = record.identify(cfg, job, chosen.value, ds.sha256, workdir, device,
                                                      resolved.loop.value)
    # Said now, not at the end: after a kill -9 nothing else tells which folder holds what to resume.
    log.info("Output folder: %s\n  checkpoint of the last finished epoch: %s\n  if this run dies, resume it with: %s",
             workdir.resolve(), backup.folder, resume_command(job))
    # Records the store does not take (a server lost mid-run) are kept here, to import later.
    kept = outbox.Outbox(workdir / outbox.FILENAME)
    system_metrics = cfg.tracking.system_metrics_interval if cfg.tracking.system_metrics else None
    trial = search.JobTrial.of_job(job.sweep_dir, job.num)  # an Optuna sweep's job: report each epoch, maybe prune
    if trial is not None:
        trial.starts(backup.folder, backup.epochs)
        run_tags.update(trial.tags())
    with runs.run(
        experiment_id, job.name or cfg.model.name, run_tags, parent_run_id, resume_run_id=backup.run_id, outbox=kept,
        system_metrics=system_metrics,
    ) as run:
        backup.record_run(run.info.run_id)
        ui = store.ui_hint(mlflow.get_tracking_uri(), experiment_id, run.info.run_id)
        log.info(ui)
        record.log_start(run, cfg, ds, chosen.value, kept)
        with scope:
            model = record.build(cfg, ds)
            initial_epoch = backup.restore(model)  # 0 unless resuming
        model.summary(print_fn=lambda line, **_: log.info(line))

        training = loop.trainer(resolved, model, ds, cfg)  # Keras fit, or compiled epochs on JAX: the same interface
        found = _callbacks(cfg, run.info.run_id, backup, kept, trial)
        try:
            this_start = training.fit(cfg.trainer.epochs, initial_epoch, found)
        finally:
            backup.wait()  # its writer thread's last epoch on disk, also after Ctrl-C (src/training/resume.py)
        record.raise_on_nan(this_start, cfg)
        if trial is not None and trial.pruned_at is not None:  # stopped, not failed: the run ends FINISHED
            kept.set_tag(run.info.run_id, names.PRUNED, "true")
            kept.set_tag(run.info.run_id, names.PRUNED_AT_EPOCH, str(trial.pruned_at))
        # every epoch's history, also those before a requeue
        objective = record.finish(cfg, run.info.run_id, kept, backup.history, training.evaluate("test"), model, ds,
                                  workdir)
    backup.discard()  # the run is FINISHED: nothing left to resume
    log.info("Run %s FINISHED. %s", run.info.run_id, ui)

    return objective


def _callbacks(cfg, run_id: str, backup, kept, trial=None) -> list:
    import keras  # imported by train() after the backend is chosen: here only a name

    from .training import callbacks, record

    # The backup commits an epoch before MLflow logs it: see src/training/resume.py for why this order.
    found = [
        callbacks.StopOnSignal(),
        keras.callbacks.TerminateOnNaN(),
        backup,
        callbacks.MLflowMetrics(run_id, finished_epochs=backup.epochs, outbox=kept, committed=backup.committed),
    ]
    if (stopper := record.early_stopping(cfg)) is not None:
        found.append(stopper)
    if trial is not None:  # last: the epoch is backed up and logged before the pruner may stop training
        found.append(callbacks.ReportToTrial(trial, cfg.trainer.monitor, cfg.trainer.epochs))
    return found


if __name__ == "__main__":
    if hint := config.unquoted_non_ascii(sys.argv[1:]):  # before Hydra, whose own error does not say why
        print(f"Error: {hint}", file=sys.stderr)
        sys.exit(2)
    main()
