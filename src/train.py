"""Train one model and record it in MLflow.

    python -m src.train                                   # the lab's MNIST dense net
    python -m src.train model=imdb_dropout                # IMDB dropout net (selects the IMDB dataset)
    python -m src.train -m optimizer.learning_rate=1e-2,1e-3,1e-4

Returns the best value of `trainer.monitor` (default val_loss), so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ start-up chatter

import hydra
import keras
import mlflow
import numpy as np
from mlflow.entities import Metric
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from . import config, data, hardware, models, outbox, plots, preflight, resume, sweep, tracking

config.register()
log = logging.getLogger(__name__)

# Failures whose message already names the cause and the fix: shown without a traceback.
USER_ERRORS = (
    config.ConfigError,
    data.DataError,
    hardware.HardwareError,
    tracking.TrackingError,
    preflight.FolderError,
    FloatingPointError,
)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return train(cfg)
    except USER_ERRORS as err:
        if multirun:
            raise  # Hydra marks this job failed and still runs the rest of the sweep
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, tracking.Terminated):
        print("Interrupted: any MLflow run was ended KILLED, keeping the metrics logged so far.", file=sys.stderr)
        sys.exit(130)


def train(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    config.validate(cfg)
    output_dir = Path(hc.runtime.output_dir)
    preflight.check_folder(output_dir, "output folder", preflight.OUTPUT_FIX)
    uri = tracking.tracking_uri(cfg.tracking.tracking_uri)
    experiment_id = tracking.connect(uri, cfg.tracking.experiment_name)

    keras.backend.clear_session()  # each multirun job starts from a clean TensorFlow state
    strategy, device = hardware.setup(cfg.hardware)
    keras.utils.set_random_seed(cfg.seed)
    tuning = data.Tuning(cfg.hardware.num_parallel_calls, cfg.hardware.prefetch_buffer_size)
    ds = data.load(cfg.dataset, cfg.trainer.batch_size, cfg.seed, data.data_dir(cfg.data_dir), tuning)
    log.info("Data: %s", ", ".join(f"{k} {n}" for k, n in ds.sizes.items()))

    parent_run_id, sweep_tags = sweep.parent(hc)  # a multirun's jobs are children of one parent run
    run_tags = {**tracking.tags(hc.runtime.choices, list(hc.overrides.task)), **sweep_tags, "device": device}
    run_params = tracking.params(cfg)
    # Checkpoint of the last finished epoch, in a folder a requeued SLURM job finds again.
    job_num = hc.job.num if hc.mode == RunMode.MULTIRUN else None
    backup = resume.for_run(cfg.trainer.backup_dir, output_dir, job_num, run_params)
    # Records the store does not take (a server lost mid-run) are kept here, to import later.
    kept = outbox.Outbox(output_dir / outbox.FILENAME)
    with tracking.run(
        experiment_id, _run_name(hc), run_tags, parent_run_id, resume_run_id=backup.run_id, outbox=kept
    ) as run:
        backup.record_run(run.info.run_id)
        mlflow.log_params(run_params)
        with strategy.scope():
            model = models.build_model(cfg.model, ds.input_shape, ds.num_classes)
            model.compile(
                optimizer=models.build_optimizer(cfg.optimizer),
                loss=ds.loss,
                metrics=["accuracy"],
                jit_compile=cfg.hardware.jit_compile and not ds.sparse,  # XLA has no sparse kernels
                steps_per_execution=cfg.hardware.steps_per_execution,
            )
            initial_epoch = backup.restore(model)  # 0 unless resuming
        model.summary(print_fn=lambda line, **_: log.info(line))

        this_start = model.fit(
            ds.train,
            validation_data=ds.val,
            initial_epoch=initial_epoch,
            epochs=cfg.trainer.epochs,
            callbacks=_callbacks(cfg, run.info.run_id, backup, kept),
            verbose=cfg.trainer.verbose,
            shuffle=False,  # the pipeline reshuffles every epoch itself
        ).history
        _raise_on_nan(this_start, cfg)
        history = backup.history  # every epoch, also those before a requeue

        test = model.evaluate(ds.test, return_dict=True, verbose=0)
        now = int(time.time() * 1000)
        kept.log_metrics(run.info.run_id, [Metric(f"test_{k}", float(v), now, 0) for k, v in test.items()])
        log.info("Test: %s", ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
        predictions = _predictions(model, *ds.sample)
        log.info("First 10 test predictions:\n%s", predictions)
        _log_artifacts(cfg, history, predictions, model, output_dir, kept, run.info.run_id)
    backup.discard()  # the run is FINISHED: nothing left to resume

    return _objective(history, cfg.trainer.monitor)


def _callbacks(cfg, run_id: str, backup: resume.Backup, kept: outbox.Outbox) -> list[keras.callbacks.Callback]:
    # The backup commits an epoch before MLflow logs it: see src/resume.py for why this order.
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        backup,
        tracking.MLflowMetrics(run_id, finished_epochs=backup.epochs, outbox=kept),
    ]
    if cfg.trainer.early_stopping_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=cfg.trainer.monitor,
                patience=cfg.trainer.early_stopping_patience,
                restore_best_weights=True,
                verbose=1,
            )
        )
    return callbacks


def _raise_on_nan(history: dict, cfg) -> None:
    losses = history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise FloatingPointError(
            f"loss became NaN at epoch {len(losses)}: training diverged. "
            f"Fix: lower optimizer.learning_rate (now {cfg.optimizer.learning_rate})."
        )


def _objective(history: dict, monitor: str) -> float:
    values = history[monitor]
    return float(min(values) if monitor.endswith("loss") else max(values))


def _predictions(model: keras.Model, x: np.ndarray, y: np.ndarray) -> str:
    """The first test samples as CSV: true label, predicted label, confidence."""
    probs = model.predict(x, verbose=0)
    if probs.shape[-1] == 1:  # binary: probability of the positive class
        predicted = (probs[:, 0] > 0.5).astype(int)
        confidence = np.where(predicted == 1, probs[:, 0], 1 - probs[:, 0])
    else:
        predicted, confidence = probs.argmax(-1), probs.max(-1)
    rows = [f"{i},{int(t)},{p},{c:.4f}" for i, (t, p, c) in enumerate(zip(y, predicted, confidence))]
    return "\n".join(["index,label,predicted,confidence", *rows])


def _log_artifacts(cfg, history, predictions, model, output_dir: Path, kept: outbox.Outbox, run_id: str) -> None:
    """Written to a temporary folder first, so a failure never leaves a half-written artifact set."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.yaml").write_text(tracking.config_yaml(cfg))
        (tmp / "predictions.csv").write_text(predictions + "\n")
        plots.history(history, tmp / "plots" / "history.png", title=f"{cfg.model.name} on {cfg.dataset.name}")
        if cfg.tracking.log_model:
            (tmp / "model").mkdir()
            model.save(tmp / "model" / "model.keras")  # load with keras.saving.load_model (safe mode)
        if (output_dir / ".hydra").is_dir():  # scrubbed copies: the command line may hold a secret
            tracking.hydra_files(output_dir / ".hydra", tmp / "hydra")
        kept.log_artifacts(run_id, tmp)


def _run_name(hc) -> str:
    overrides = hc.job.override_dirname
    name = hc.runtime.choices.get("model", "run")
    return tracking.redact(f"{name}[{overrides}]")[:250] if overrides else name


if __name__ == "__main__":
    main()
