"""JAX's persistent compilation cache (src/training/compilation_cache.py, hardware.compilation_cache_dir)."""

from __future__ import annotations

import logging
import os

import mlflow
import pytest

from conftest import base_overrides, compose, run_cli
from src.training import compilation_cache as cc


@pytest.fixture(autouse=True)
def _jax_env_restored(monkeypatch):
    # enable() exports JAX's variables: each test's own
    monkeypatch.delenv(cc.DIR_ENV, raising=False)
    monkeypatch.delenv(cc.MIN_TIME_ENV, raising=False)


def test_auto_is_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cc.folder("auto") == tmp_path / "xdg" / "le5" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cc.folder("auto") == tmp_path / "home" / ".cache" / "le5" / "jax"


@pytest.mark.parametrize("off", [None, "null", "off", ""])
def test_null_turns_it_off(off):
    assert cc.folder(off) is None
    assert cc.enable(off) is None
    assert cc.DIR_ENV not in os.environ
    assert cc.describe(off) == (True, "JAX compilation cache: off (hardware.compilation_cache_dir=null)")


def test_a_folder_is_created_and_jax_pointed_at_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARED", str(tmp_path))
    assert cc.enable("$SHARED/cache") == tmp_path / "cache"
    assert os.environ[cc.DIR_ENV] == str(tmp_path / "cache")
    assert os.environ[cc.MIN_TIME_ENV] == "0"  # the lab's nets compile in under JAX's 1 s threshold
    assert (tmp_path / "cache").is_dir() and not list((tmp_path / "cache").iterdir())  # the probe is gone
    (tmp_path / "cache" / "jit_epoch-abc").write_bytes(b"x" * 2048)
    assert cc.describe(str(tmp_path / "cache")) == (True, f"JAX compilation cache: {tmp_path / 'cache'} (1 programs, 0.0 MiB)")


def test_an_unusable_folder_degrades_to_compiling_with_one_warning(tmp_path, caplog):
    (tmp_path / "a-file").write_text("not a folder")
    os.environ[cc.DIR_ENV] = "/left/over"
    with caplog.at_level(logging.WARNING, logger=cc.__name__):
        assert cc.enable(str(tmp_path / "a-file" / "cache")) is None
    assert cc.DIR_ENV not in os.environ
    [line] = caplog.messages
    assert line.startswith("JAX compilation cache off: ") and "a-file" in line and "compilation_cache_dir=" in line
    good, text = cc.describe(str(tmp_path / "a-file" / "cache"))
    assert not good and "unusable" in text and "Fix: hardware.compilation_cache_dir=" in text


def test_off_after_on_in_one_process_resets_jaxs_config(tmp_path):
    """Once JAX is imported its config, not the environment, decides: a later run with null must turn it off."""
    jax = pytest.importorskip("jax")
    before = jax.config.jax_compilation_cache_dir
    try:
        cc.enable(str(tmp_path / "cache"))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        cc.enable(None)
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_the_schema_has_it_on_by_default():
    assert compose([]).hardware.compilation_cache_dir == "auto"
    assert compose(["hardware.compilation_cache_dir=null"]).hardware.compilation_cache_dir is None


def test_a_second_run_loads_its_programs_and_a_corrupt_cache_only_costs_a_compile(data_dir, store, experiment, tmp_path):
    pytest.importorskip("jax")
    cache = tmp_path / "cache"
    args = [*base_overrides(data_dir, store, experiment), "backend=jax", "trainer.loop=compiled", "trainer.epochs=1",
            "hardware=cpu", f"hardware.compilation_cache_dir={cache}", f"hydra.run.dir={tmp_path / 'out'}"]
    env = {"JAX_LOG_COMPILES": "1"}
    first = run_cli(args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    programs = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
    assert programs, "the first run left no program in the cache"
    assert "Persistent compilation cache hit" not in first.stdout + first.stderr
    second = run_cli(args, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Persistent compilation cache hit" in second.stdout + second.stderr

    for p in programs:
        p.write_bytes(b"\x00 not an executable")
    third = run_cli(args, env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
