"""The names of MLflow tags and metrics this project writes and reads, in one place.

Several modules write a tag that others read (the sweep's parent id, a run's failure reason, its owner):
a name spelled twice can drift, and then a reader silently finds nothing. Imports nothing.
"""

# MLflow's own tags
PARENT_RUN = "mlflow.parentRunId"  # a child run's parent (a sweep's jobs)
GIT_COMMIT = "mlflow.source.git.commit"

# A run's end and provenance
FAILURE_REASON = "failure_reason"  # why a run ended FAILED or KILLED
BACKEND, BACKEND_VERSION, KERAS = "backend", "backend.version", "keras"
DEVICE = "device"
LOOP_RESOLVED = "trainer.loop_resolved"  # which loop trained the run (fit or compiled)
OUTPUT_DIR, BACKUP_DIR = "output_dir", "backup_dir"  # the run's output folder and its checkpoint folder

# Who owns a RUNNING run (src/tracking/liveness.py)
OWNER_HOST, OWNER_PID, OWNER_START_TICKS, OWNER_BOOT_ID = "owner.host", "owner.pid", "owner.start_ticks", "owner.boot_id"
HEARTBEAT = "heartbeat"

# SLURM ids (src/tracking/provenance.py sets them on runs, src/sweeps/sweep.py on a sweep's parent)
SLURM_JOB, SLURM_ARRAY_JOB, SLURM_ARRAY_TASK = "slurm.job_id", "slurm.array_job_id", "slurm.array_task_id"
SLURM_RESTART_COUNT = "slurm.restart_count"

# Sweeps (src/sweeps/sweep.py): on the children, and on the parent
SWEEP_DIR, SWEEP_OVERRIDES, SWEEP_JOB_NUM, SWEEP_CHILDREN = "sweep.dir", "sweep.overrides", "sweep.job_num", "sweep.children"
BEST_RUN_ID, BEST_RUN_NAME = "best_run_id", "best_run_name"
SWEEP_POINT = "sweep.point"  # a hash of the point's resolved config (src/sweeps/manifest.py): what a resumed sweep skips
SWEEP_RETRY_OF = "sweep.retry_of"  # on a point's new child: the run it retries (left FAILED)
# hydra/launcher=fused (src/fused/launch.py): on each member's run, its group (<sweep folder>/<group number>) and its size
FUSED_GROUP, FUSED_MEMBERS = "fused.group", "fused.members"

# Metrics: each epoch's Keras logs (loss, accuracy, val_loss, val_accuracy) and the time it took; test_* at the end
EPOCH_TIME = "epoch_time_s"
HISTORY = ("loss", "accuracy", "val_loss", "val_accuracy")
TEST_PREFIX = "test_"


def objective(monitor: str) -> str:
    """The metric holding a run's objective: its best epoch's `monitor` (best_val_loss), what src.train returns to
    sweepers and what "the best run" means everywhere (the sweep summary, compare, the Optuna study)."""
    return f"best_{monitor}"

# Optuna sweeps (src/sweeps/search.py): on each trial's run, and on the sweep's parent
OPTUNA_TRIAL, OPTUNA_PARAM = "optuna.trial", "optuna.param"  # the trial's number; optuna.param.<key>: a sampled value
OPTUNA_CONTINUES = "optuna.continues"  # a retried trial's run: the number of the killed trial whose run it continues
PRUNED, PRUNED_AT_EPOCH = "pruned", "pruned_at_epoch"  # a trial its pruner stopped: its run ends FINISHED with these
OPTUNA_TRIALS, OPTUNA_BEST_TRIAL, OPTUNA_BEST_VALUE, OPTUNA_BEST_PARAMS = (
    "optuna.trials", "optuna.best_trial", "optuna.best_value", "optuna.best_params")
