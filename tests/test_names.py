"""Names on the command line: non-ASCII values for Hydra, and the experiment a run lands in by default."""

from __future__ import annotations

import mlflow

from src import config
from tests.conftest import base_overrides, compose, run_cli


def test_unquoted_non_ascii_gets_the_quoting_hint_before_hydra():
    result = run_cli(["tracking.experiment_name=Größe"], timeout=60)
    assert result.returncode == 2
    assert "Hydra reads non-ASCII characters only inside quotes" in result.stderr
    assert """'tracking.experiment_name="Größe"'""" in result.stderr  # the fix, ready to paste
    assert "LexerNoViableAltException" not in result.stderr


def test_quoted_non_ascii_is_taken_and_plain_overrides_are_left_alone():
    assert compose(['tracking.experiment_name="Größe"']).tracking.experiment_name == "Größe"
    assert compose(["tracking.experiment_name='学习率 1e-3'"]).tracking.experiment_name == "学习率 1e-3"
    assert config.unquoted_non_ascii(['tracking.experiment_name="Größe"', "-m", "trainer.epochs=1,2"]) is None
    # flags and their values, not overrides
    assert config.unquoted_non_ascii(["--config-path=/tmp/Größe", "-cd", "/tmp/Größe"]) is None
    assert "Größe" in config.unquoted_non_ascii(["trainer.epochs=1", "hydra.run.dir=/tmp/Größe"])


def test_one_experiment_per_dataset_by_default(data_dir, store, tmp_path):
    assert config.experiment_name(compose([])) == "mnist"
    assert config.experiment_name(compose(["model=imdb_dropout"])) == "imdb"
    assert config.experiment_name(compose(["model=imdb_dropout", "tracking.experiment_name=mine"])) == "mine"

    # the command line, with no experiment named: the IMDB model's run lands in experiment "imdb"
    overrides = [o for o in base_overrides(data_dir, store, "unused") if not o.startswith("tracking.experiment_name")]
    result = run_cli([*overrides, "model=imdb_dropout", "tracking.log_model=false", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(store)
    [run] = mlflow.search_runs(experiment_names=["imdb"], output_format="list")
    assert run.data.tags["model"] == "imdb_dropout"


def test_mlflow_tag_names_are_spelled_only_in_src_names():
    """A tag written by one module and read by another is named once (src/tracking/names.py): a name spelled twice
    can drift, and its reader then silently finds nothing. Every module of every wing is read."""
    import re

    from conftest import ROOT

    spelled = re.compile(r"""["'](failure_reason|mlflow\.parentRunId|heartbeat|best_run_id|(sweep|slurm|owner)\.(?!png["'])[a-z_]+)["']""")  # not a file name
    found = {
        f"{path.relative_to(ROOT)}:{number}": line.strip()
        for path in sorted((ROOT / "src").rglob("*.py")) if path.name != "names.py"
        for number, line in enumerate(path.read_text().splitlines(), 1) if spelled.search(line)
    }
    assert found == {}
