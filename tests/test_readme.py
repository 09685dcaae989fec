"""README.md as a newcomer reads it: its "Adding a dataset" and "Adding a model" blocks pasted as they are and
trained, every path and link it names present in a clone, and short enough to read (at most 345 lines)."""

from __future__ import annotations

import re

import mlflow
import pytest

from conftest import ROOT, base_overrides, compose, train_composed, write_mnist
from src.training import models

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The text of README's section `## {title}`, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no section '## {title}'"
    return match.group(1)


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_readme_adding_a_dataset_and_a_model_work_as_pasted(conf, tmp_path, store, experiment, monkeypatch):
    """The YAML of both sections, written to the files the prose names, and the builder line run as Python:
    the new model trains on the new dataset. (A `# conf/model/mlp.yaml` line above `# @package _global_` made
    Hydra ignore the directive: "Could not override 'dataset@model.dataset'".)"""
    dataset_text, model_text = section("Adding a dataset"), section("Adding a model")
    [dataset_yaml] = blocks(dataset_text, "yaml")
    [model_yaml] = blocks(model_text, "yaml")
    [builder] = blocks(model_text, "python")
    dataset_file = re.search(r"`(conf/dataset/\w+\.yaml)`", dataset_text).group(1)
    model_file = re.search(r"`(conf/model/\w+\.yaml)`", model_text).group(1)
    (tmp_path / dataset_file).write_text(dataset_yaml)
    (tmp_path / model_file).write_text(model_yaml)

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))  # the registry is put back after the test
    exec(builder, vars(models))  # MODELS["mlp"] = mnist_dense, as if pasted into src/training/models.py
    dataset, model = dataset_file.split("/")[-1][:-5], model_file.split("/")[-1][:-5]
    data = tmp_path / "data"
    data.mkdir()
    write_mnist(data / re.search(r"^file: (\S+)", dataset_yaml, re.M).group(1), seed=3)
    overrides = [*base_overrides(data, store, experiment), f"model={model}", f"dataset={dataset}"]
    cfg = compose(overrides, output_dir=tmp_path / "run", conf_dir=conf)
    assert train_composed(cfg) >= 0
    [run] = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert run.info.status == "FINISHED" and run.data.tags["model"] == model and run.data.tags["dataset"] == dataset


def test_every_path_and_link_in_readme_exists_in_a_clone():
    """No `../shared/...` or machine-local path: a newcomer's clone has only the repository."""
    linked = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    named = re.findall(r"(?<!write )`((?:docs|src|conf|tests|slurm|benchmarks)/[\w./-]+)`", README)  # not a file to write
    missing = [p for p in [*linked, *named] if not p.startswith("http") and not (ROOT / p).exists()]
    assert missing == []
    assert "../shared" not in README and "/work/" not in README


@pytest.mark.parametrize("doc", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_every_link_in_docs_exists_in_a_clone(doc):
    """What README links to links on only to files of the repository, never to a folder beside the clone."""
    text = doc.read_text()
    linked = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    missing = [p for p in linked if not p.startswith("http") and not (doc.parent / p).exists()]
    assert missing == []
    assert "../shared" not in text and "/work/" not in text


def test_readme_is_short_and_its_internal_links_resolve():
    assert len(README.splitlines()) <= 345
    anchors = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in re.findall(r"^#+ (.*)$", README, re.M)}
    assert set(re.findall(r"\]\(#([^)]+)\)", README)) <= anchors


def test_readme_starts_with_the_offline_step_then_the_two_commands():
    first = blocks(README, "bash")[:2]
    assert first[0].strip().startswith("export LE5_DATA_DIR=")
    setup, tests = [line.split("#")[0].strip() for line in first[1].strip().splitlines()]
    assert setup == 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m src.train'
    assert tests == ".venv/bin/python -m pytest"
    assert tests in (ROOT / ".ci" / "run").read_text()  # CI runs the command README gives
