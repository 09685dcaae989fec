"""The start-up check of the output folder (src/preflight.py): a folder that cannot be written or is full is
refused in milliseconds, with a one-screen message naming the fix, instead of a crash hours later.

The tests run as any user (root included, whom permissions do not stop): an unwritable folder is one below a
regular file, a full disk or a used-up quota is a patched shutil.disk_usage or os.fsync.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src import preflight

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def usage_asked(monkeypatch):
    """The folders shutil.disk_usage is asked about (the real answer is returned)."""
    asked = []
    real = shutil.disk_usage

    def spy(path):
        asked.append(Path(path))
        return real(path)

    monkeypatch.setattr(shutil, "disk_usage", spy)
    return asked


def test_a_new_folder_is_probed_at_its_nearest_existing_parent_and_left_alone(tmp_path, usage_asked):
    """Nothing is created: Hydra makes the folder itself; the probe file is gone afterwards."""
    preflight.check_folder(tmp_path / "outputs" / "2026-11-27" / "run", "output folder", "fix it")
    assert usage_asked == [tmp_path]
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_probed_itself(tmp_path, usage_asked):
    (tmp_path / "out").mkdir()
    preflight.check_folder(tmp_path / "out", "output folder", "fix it")
    assert usage_asked == [tmp_path / "out"]
    assert list((tmp_path / "out").iterdir()) == []


def test_home_and_relative_folders_are_made_absolute(tmp_path, monkeypatch, usage_asked):
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    preflight.check_folder("~/outputs", "output folder", "fix it")
    preflight.check_folder(Path("outputs/run"), "output folder", "fix it")
    assert usage_asked == [tmp_path / "home", tmp_path / "cwd"]


def test_the_probe_is_a_hidden_file_of_probe_bytes_synced_to_disk(tmp_path, monkeypatch):
    """Writing and syncing real bytes is what finds a used-up quota; a hidden name if a kill leaves it behind."""
    opened, synced = [], []
    real_open, real_sync = tempfile.NamedTemporaryFile, os.fsync

    def spy_open(*args, **kwargs):
        probe = real_open(*args, **kwargs)
        opened.append(Path(probe.name))
        return probe

    def spy_sync(fd):
        real_sync(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", spy_open)
    monkeypatch.setattr(os, "fsync", spy_sync)
    preflight.check_folder(tmp_path, "output folder", "fix it")
    [probe] = opened
    assert probe.parent == tmp_path and probe.name.startswith(".le5-probe-")
    assert synced == [preflight.PROBE_BYTES]
    assert not probe.exists()


def test_a_folder_below_a_file_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("")
    folder = tmp_path / "file" / "outputs"
    with pytest.raises(preflight.FolderError) as raised:
        preflight.check_folder(folder, "output folder", "write elsewhere.")
    assert str(raised.value) == f"cannot write the output folder {folder} (Not a directory).\nFix: write elsewhere."
    assert isinstance(raised.value.__cause__, NotADirectoryError)


@pytest.mark.parametrize(
    "error,shown",
    [
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded"),
        (OSError("the filesystem said no"), "the filesystem said no"),  # no strerror: the error's text
    ],
)
def test_a_failing_sync_is_reported_with_the_reason(tmp_path, monkeypatch, error, shown):
    def fail(fd):
        raise error

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(preflight.FolderError) as raised:
        preflight.check_folder(tmp_path, "SQLite store folder", "free space.")
    assert str(raised.value) == f"cannot write the SQLite store folder {tmp_path} ({shown}).\nFix: free space."
    assert list(tmp_path.iterdir()) == []  # the probe is removed all the same


@pytest.mark.parametrize(
    "free,message",
    [
        (0, "0 MiB free"),
        (3 * 2**20 + 1, "3 MiB free"),
        (preflight.MIN_FREE_BYTES - 2**20, "99 MiB free"),
        (preflight.MIN_FREE_BYTES, None),  # exactly enough
        (10 * preflight.MIN_FREE_BYTES, None),
    ],
)
def test_a_nearly_full_disk_is_refused(tmp_path, monkeypatch, free, message):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(2**40, 2**40 - free, free))
    if message is None:
        preflight.check_folder(tmp_path, "output folder", "free space.")
        return
    with pytest.raises(preflight.FolderError) as raised:
        preflight.check_folder(tmp_path, "output folder", "free space.")
    assert str(raised.value) == (
        f"the output folder {tmp_path} is (nearly) full: {message}, 100 MiB needed.\nFix: free space."
    )


def hydra_config(run_dir, sweep_dir):
    return OmegaConf.create({"hydra": {"run": {"dir": str(run_dir)}, "sweep": {"dir": str(sweep_dir)}}})


@pytest.mark.parametrize("multirun", [False, True])
def test_the_callback_exits_2_with_one_message_when_the_folder_of_its_mode_is_bad(tmp_path, capsys, multirun):
    """A single run checks hydra.run.dir, a multirun hydra.sweep.dir; the other folder is not its business."""
    (tmp_path / "file").write_text("")
    bad, good = tmp_path / "file" / "out", tmp_path / "good"
    callback = preflight.OutputFolderCheck()
    start = callback.on_multirun_start if multirun else callback.on_run_start

    start(hydra_config(run_dir=bad, sweep_dir=good) if multirun else hydra_config(run_dir=good, sweep_dir=bad))
    with pytest.raises(SystemExit) as exited:
        start(hydra_config(run_dir=good, sweep_dir=bad) if multirun else hydra_config(run_dir=bad, sweep_dir=good))
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"Error: cannot write the output folder {bad} (Not a directory).\nFix: {preflight.OUTPUT_FIX}\n"
