"""The one rule from what ended a run to its MLflow status, and the predicates every reader of a status asks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from src.tracking import status


def run_with(state: str):
    return SimpleNamespace(info=SimpleNamespace(status=state))


def test_the_names_are_mlflows():
    assert (status.FINISHED, status.FAILED, status.KILLED, status.RUNNING) == ("FINISHED", "FAILED", "KILLED",
                                                                               "RUNNING")


@pytest.mark.parametrize("err, expected", [
    (None, ("FINISHED", None)),
    (KeyboardInterrupt(), ("KILLED", "KeyboardInterrupt (Ctrl-C): interrupted during training")),
    (status.Terminated("SIGTERM (signal 15)"), ("KILLED", "Terminated: SIGTERM (signal 15): interrupted during training")),
    (SystemExit(3), ("KILLED", "SystemExit: interrupted")),  # a requeue's exit: resumable, not a failure
    (ValueError("loss is NaN"), ("FAILED", "ValueError: loss is NaN")),
    (MemoryError(), ("FAILED", "MemoryError: ")),
], ids=["returned", "ctrl-c", "sigterm", "exit", "error", "no-message"])
def test_what_ended_a_run_decides_its_status_and_reason(err, expected):
    assert status.ending(err) == expected
    assert status.interrupted(err) == (expected[0] == "KILLED")


def test_sigterm_is_an_interruption_like_ctrl_c():
    assert isinstance(status.Terminated(), KeyboardInterrupt)  # every `except KeyboardInterrupt` also takes SIGTERM


@pytest.mark.parametrize("state, finished, running, unfinished", [
    ("FINISHED", True, False, False),
    ("RUNNING", False, True, False),
    ("FAILED", False, False, True),
    ("KILLED", False, False, True),
    ("SCHEDULED", False, False, False),
])
def test_a_points_runs_are_read_by_the_predicates(state, finished, running, unfinished):
    run = run_with(state)
    assert (status.finished(run), status.running(run), status.ended_unfinished(run)) == (finished, running, unfinished)
