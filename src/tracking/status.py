"""A run's status, in one place: MLflow's names for it, what ended a run (the one exception -> status rule), and
what a sweep's point is from its runs (done, resumable, to retry).

Every module that ends a run (a lone run, a fused member, a sweep's parent) asks `ending`; every module that reads
one (a resumed sweep, compare, the summary) asks the predicates below, never a string of its own. Imports MLflow's
RunStatus only.
"""

from __future__ import annotations

from mlflow.entities import RunStatus

FINISHED = RunStatus.to_string(RunStatus.FINISHED)
FAILED = RunStatus.to_string(RunStatus.FAILED)
KILLED = RunStatus.to_string(RunStatus.KILLED)
RUNNING = RunStatus.to_string(RunStatus.RUNNING)


class Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM's time limit, preemption, scancel) turned into an exception, like Ctrl-C."""


def interrupted(err: BaseException | None) -> bool:
    """Whether `err` stopped the run from outside (Ctrl-C, SIGTERM, a requeue's SystemExit), not a failure of it."""
    return isinstance(err, (KeyboardInterrupt, SystemExit))


def interrupt_reason(err: BaseException) -> str:
    """The failure_reason of a run ended KILLED by `err` (Ctrl-C, SIGTERM, a requeue's exit)."""
    if isinstance(err, Terminated):
        return f"Terminated: {err}: interrupted during training"  # "SIGTERM (signal 15)"
    if isinstance(err, KeyboardInterrupt):
        return "KeyboardInterrupt (Ctrl-C): interrupted during training"
    return f"{type(err).__name__}: interrupted"


def ending(err: BaseException | None) -> tuple[str, str | None]:
    """(status, failure reason) of a run that ended with `err` (None: it returned): FINISHED with no reason;
    KILLED when interrupted from outside; FAILED, with the exception, otherwise."""
    if err is None:
        return FINISHED, None
    if interrupted(err):
        return KILLED, interrupt_reason(err)
    return FAILED, f"{type(err).__name__}: {err}"


def finished(run) -> bool:
    return run.info.status == FINISHED


def running(run) -> bool:
    return run.info.status == RUNNING


def ended_unfinished(run) -> bool:
    """FAILED or KILLED: the run ended without finishing (a point that a rerun retries)."""
    return run.info.status in (FAILED, KILLED)
