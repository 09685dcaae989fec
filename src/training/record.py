"""A run's record, the same for every launcher: what a run is before it opens, what it logs when it starts, and
its end (test metrics, objective, predictions, plots, config, model).

`src.train.train` and each member of a fused group (src/fused/launch.py) call these functions, so a fused member's
MLflow record equals a lone run's field for field (tests/test_fused.py compares the two). The run's status at its
end follows the one rule of src/tracking/status.py. Imports Keras: import it after the backend is chosen.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.models import infer_signature

from .. import config
from ..errors import UserError
from ..report import plots
from ..sweeps import manifest, sweep
from ..tracking import inputs, names, provenance, redaction, runs
from . import batches, models, resume
from .job import Job

log = logging.getLogger(__name__)


def identify(cfg, job: Job, backend_name: str, data_sha256: str, workdir: Path, device: str, loop_name: str,
             unfinished=None):
    """What a run is before it opens: (its sweep's parent run id or None, its tags, its checkpoint `resume.Backup`).
    Sets `job.backup_dir`. `unfinished(parent_run_id)` gives the parent's children that did not finish, by point
    (default: a search for this point's; a fused group searches once for all its members)."""
    parent_run_id, sweep_tags = sweep.parent(job.sweep_dir, job.overrides, job.num)
    if parent_run_id:  # the point's identity, by which a resumed sweep knows it is done (src/sweeps/manifest.py)
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


def log_start(run, cfg, ds, backend_name: str, outbox) -> None:
    """What a run logs when it opens: the dataset's inputs (the file's sha256 per split: the UI's Dataset column)
    and the resolved config as params (a resumed run keeps its first values)."""
    outbox.log_inputs(run.info.run_id, inputs.records(cfg.dataset.name, ds.path, ds.sha256, ds.sizes))
    runs.log_params(run, {**redaction.params(cfg), names.BACKEND: backend_name})


def build(cfg, ds) -> keras.Model:
    """The run's model, built and compiled (call it under the hardware scope, after the run's seed is set)."""
    model = models.build_model(cfg.model, ds.spec)
    model.compile(
        optimizer=models.build_optimizer(cfg.optimizer),
        loss=ds.spec.loss,
        metrics=["accuracy"],
        jit_compile="auto" if cfg.hardware.jit_compile is None else cfg.hardware.jit_compile,
        steps_per_execution=cfg.hardware.steps_per_execution,
    )
    return model


def early_stopping(cfg) -> keras.callbacks.EarlyStopping | None:
    """Keras's EarlyStopping for `trainer.early_stopping_patience`, or None when it is off."""
    if cfg.trainer.early_stopping_patience is None:
        return None
    return keras.callbacks.EarlyStopping(monitor=cfg.trainer.monitor, patience=cfg.trainer.early_stopping_patience,
                                         restore_best_weights=True, verbose=1)


class Diverged(UserError, FloatingPointError):
    """The loss became NaN or infinite."""


def raise_on_nan(history: dict, cfg) -> None:
    """Raise Diverged, with the fix, when the last epoch's loss of `history` (this start's) is not finite."""
    losses = history.get("loss", [])
    if losses and not np.isfinite(losses[-1]):
        raise Diverged(
            f"loss became NaN at epoch {len(losses)}: training diverged. "
            f"Fix: lower optimizer.learning_rate (now {cfg.optimizer.learning_rate})."
        )


def finish(cfg, run_id: str, outbox, history: dict, test: dict, model, ds, workdir: Path, plot=None) -> float:
    """A trained run's end, before its status: test metrics and the objective (its best epoch's monitor), the first
    test predictions, the artifacts and the model. Returns the objective. `history`: every finished epoch's logs;
    `test`: the test split's metrics; `plot(path)`: draws the history figure when it is drawn elsewhere."""
    monitor = cfg.trainer.monitor
    objective = config.objective(history[monitor], monitor)
    runs.log_final_metrics(outbox, run_id, {**{f"{names.TEST_PREFIX}{k}": v for k, v in test.items()},
                                            names.objective(monitor): objective})
    log.info("Test: %s", ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    x = batches.first(ds.test, 10)
    outputs = np.asarray(model.predict(x, verbose=0))  # once: the predictions' CSV and the model's signature
    found = predictions(outputs, ds.test.y[:10])
    log.info("First 10 test predictions:\n%s", found)
    log_artifacts(cfg, history, found, model, workdir, outbox, run_id, plot=plot, example=(x, outputs))
    return float(objective)


def predictions(probs, y) -> str:
    """The first test samples as CSV: true label, predicted label, confidence (`probs`: the model's outputs)."""
    probs = np.asarray(probs)
    if probs.shape[-1] == 1:  # binary: probability of the positive class
        predicted = (probs[:, 0] > 0.5).astype(int)
        confidence = np.where(predicted == 1, probs[:, 0], 1 - probs[:, 0])
    else:
        predicted, confidence = probs.argmax(-1), probs.max(-1)
    rows = [f"{i},{int(t)},{p},{c:.4f}" for i, (t, p, c) in enumerate(zip(y, predicted, confidence))]
    return "\n".join(["index,label,predicted,confidence", *rows])


def plot_title(cfg) -> str:
    return f"{cfg.model.name} on {cfg.dataset.name}"


def log_artifacts(cfg, history, predictions, model, workdir: Path, kept, run_id: str, plot=None, example=None) -> None:
    """Written to a temporary folder first, so a failure never leaves a half-written artifact set. `plot(path)`
    writes the history figure there when it is drawn elsewhere (the fused launcher's plot workers); `example`: a few
    inputs as the model takes them and its outputs for them, for the logged model's signature."""
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
        log_model(model, kept, run_id, example)


def signature(example):
    """The model's signature (input and output tensors) from (a few inputs, the model's outputs for them), or None
    without them. Given explicitly: without it MLflow warns at every run that the model has none."""
    if example is None:
        return None
    x, outputs = example[0][:2], example[1][:2]
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)  # a CSR batch (sparse inputs on TensorFlow)
    return infer_signature(x, np.asarray(outputs))


def log_model(model, kept, run_id: str, example=None) -> None:
    """The model through MLflow's Keras flavour, named after the model option (its Keras name): "Logged models" in
    the UI, mlflow.keras.load_model("runs:/<id>/<model name>"), e.g. runs:/<id>/mnist_dense.

    A store that does not take it gets the same MLflow model folder as the run's <model name>/ artifacts through
    the outbox (kept on disk until imported); runs:/<id>/<model name> then loads it from there.
    """
    # explicit requirements: inferring them would start a subprocess that imports the backend again
    requirements = mlflow.keras.get_default_pip_requirements()
    found = signature(example)
    try:
        mlflow.keras.log_model(model, name=model.name, pip_requirements=requirements, signature=found)
        return
    except Exception as err:  # MlflowException from an unreachable server, OSError from an artifact store
        log.warning("MLflow did not take the model (%s: %s); keeping it for the outbox", type(err).__name__,
                    str(err).splitlines()[0][:300] if str(err) else "")
    with tempfile.TemporaryDirectory() as tmp:  # the outbox copies what it could not upload beside its file
        mlflow.keras.save_model(model, f"{tmp}/{model.name}", pip_requirements=requirements, signature=found)
        kept.log_artifacts(run_id, Path(tmp) / model.name, model.name)
