"""README's "Adding a dataset" and "Adding a model", done as a user would: YAML files in a copy of conf/
(no Python), synthetic files in Keras's .npz layout, end-to-end training recorded under the new names."""

from __future__ import annotations

import mlflow
import pytest

from conftest import base_overrides, compose, train_composed, write_imdb, write_mnist
from src import config

FASHION = """\
# A 28x28 grey image dataset in Keras's .npz layout: only this file, no Python.
name: fashion
kind: images
file: fashion.npz
shape: [28, 28]
num_classes: 10
validation_size: 100
"""

REVIEWS = """\
name: reviews
kind: sequences
file: reviews.npz
num_classes: 2
validation_size: 100
num_words: 5000
"""

MLP = """\
# @package _global_
defaults:
  - override /dataset: mnist
model:
  name: {name}
  accepts: images
  input_shape: [28, 28]
  units: [256, 128]
"""


@pytest.mark.parametrize("dataset,model,yaml,writer", [
    ("fashion", "mnist_dense", FASHION, write_mnist),
    ("reviews", "imdb_dense", REVIEWS, write_imdb),
])
def test_a_new_dataset_trains_with_one_yaml(dataset, model, yaml, writer, conf, tmp_path, store, experiment):
    (conf / "dataset" / f"{dataset}.yaml").write_text(yaml)
    data = tmp_path / "data"
    data.mkdir()
    writer(data / f"{dataset}.npz", seed=3)
    overrides = [*base_overrides(data, store, experiment), f"model={model}", f"dataset={dataset}", "trainer.epochs=2"]
    cfg = compose(overrides, output_dir=tmp_path / "run", conf_dir=conf)
    assert train_composed(cfg) >= 0
    [run] = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.tags["dataset"] == dataset and run.data.params["dataset.name"] == dataset
    assert run.data.tags["model"] == model


def test_a_new_dataset_defaults_to_its_own_experiment(conf, tmp_path):
    (conf / "dataset" / "fashion.yaml").write_text(FASHION)
    cfg = compose(["dataset=fashion"], conf_dir=conf)
    assert config.experiment_name(cfg) == "fashion"


def test_a_model_yaml_must_carry_its_own_name(conf):
    (conf / "model" / "mlp.yaml").write_text(MLP.format(name="mnist_dense"))  # copied from mnist_dense.yaml
    with pytest.raises(config.ConfigError, match="conf/model/mlp.yaml says model.name='mnist_dense'"):
        config.validate(compose(["model=mlp"], conf_dir=conf), {"model": "mlp", "dataset": "mnist"})


def test_a_new_model_without_a_builder_is_refused_before_data_loads(conf, tmp_path, store, experiment):
    (conf / "model" / "mlp.yaml").write_text(MLP.format(name="mlp"))
    empty = tmp_path / "no-data"  # no data at all: the refusal must come first
    empty.mkdir()
    cfg = compose([*base_overrides(empty, store, experiment), "model=mlp"], output_dir=tmp_path, conf_dir=conf)
    with pytest.raises(config.ConfigError, match=r"model.name='mlp' has no builder; choose from \['imdb_dense'"):
        train_composed(cfg)
