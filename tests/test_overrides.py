"""src/overrides.py: the one reading of Hydra overrides (which key an override sets), and what it is used for."""

from __future__ import annotations

import shlex
import sys

import pytest

from src import overrides as ov


@pytest.mark.parametrize("override, key", [
    ("trainer.backup_dir=/x", "trainer.backup_dir"),
    ("+trainer.backup_dir=/x", "trainer.backup_dir"),
    ("++trainer.backup_dir=/x", "trainer.backup_dir"),
    ("~seed", "seed"),
    ("~seed=42", "seed"),
    ("optimizer.learning_rate=1e-3", "optimizer.learning_rate"),
    ("trainer.tags={a: b=c}", "trainer.tags"),  # the first `=` ends the key
])
def test_key_is_the_dotted_key_whatever_the_prefix(override, key):
    assert ov.key(override) == key


def test_without_drops_an_override_of_the_key_with_any_prefix():
    # The bug it exists for: a sweep resumed with `++trainer.backup_dir=...` kept the user's value and appended the
    # checkpoint folder as a second override of the same key (the launcher compared `trainer.backup_dir=` as text).
    given = ["seed=1", "++trainer.backup_dir=/mine", "+trainer.backup_dir=/b", "trainer.backup_dir=/c", "~trainer.backup_dir"]
    assert ov.without(given, ["trainer.backup_dir"]) == ["seed=1"]


def test_without_drops_the_keys_inside_a_group_but_not_a_longer_name():
    given = ["tracking.tracking_uri=sqlite:///a.db", "++tracking.experiment_name=x", "trackingx=1", "trainer.verbose=0"]
    assert ov.without(given, ["tracking"]) == ["trackingx=1", "trainer.verbose=0"]
    assert ov.without(given, ov.NOT_TRAINED) == ["trackingx=1"]


def test_under_is_the_key_itself_or_inside_it():
    assert ov.under("tracking", ["tracking"])
    assert ov.under("tracking.tracking_uri", ["tracking"])
    assert not ov.under("tracking_uri", ["tracking"])
    assert not ov.under("trainer", ["trainer.verbose"])


def test_data_dir_changes_what_is_trained():
    # another folder can hold other data (dataset.sha256 may be null): a sweep over data_dir has a point per folder
    assert not ov.under("data_dir", ov.NOT_TRAINED)
    assert not ov.under("dataset.data_dir", ov.NOT_TRAINED)


@pytest.mark.parametrize("multirun", [False, True])
def test_train_command_is_this_interpreter_and_quoted_for_a_shell(multirun):
    overrides = ["model=imdb_dropout", "trainer.tags={note: two words}", "tracking.experiment_name=it's"]
    command = ov.train_command(overrides, multirun=multirun)
    assert shlex.split(command) == list((sys.executable, "-m", "src.train", *(["-m"] if multirun else []), *overrides))
