"""Composition: every option of every group, the schema's refusals, and the range checks."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import ROOT, compose
from src import config

GROUPS = {g: sorted(p.stem for p in (ROOT / "conf" / g).glob("*.yaml")) for g in ("dataset", "model", "optimizer", "hardware")}


@pytest.mark.parametrize(
    "group,option", [(g, o) for g, options in GROUPS.items() for o in options], ids=lambda v: str(v)
)
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if group == "dataset" and option == "imdb":
        overrides.append("model=imdb_dense")  # the default model is an MNIST model
    cfg = compose(overrides)
    assert cfg[group].name == option
    config.validate(cfg)


def test_groups_have_the_expected_options():
    assert GROUPS == {
        "dataset": ["imdb", "mnist"],
        "model": ["imdb_dense", "imdb_dropout", "mnist_cnn", "mnist_dense"],
        "optimizer": ["adam", "rmsprop", "sgd"],
        "hardware": ["auto", "cpu", "gpu", "multi_gpu"],
    }


def test_default_is_the_labs_mnist_baseline():
    cfg = compose([])
    assert (cfg.model.name, cfg.dataset.name, cfg.optimizer.name) == ("mnist_dense", "mnist", "rmsprop")
    assert list(cfg.model.units) == [512]
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (5, 128)


@pytest.mark.parametrize("model", ["imdb_dense", "imdb_dropout"])
def test_imdb_model_selects_imdb_with_the_labs_defaults(model):
    cfg = compose([f"model={model}"])
    assert cfg.dataset.name == "imdb" and cfg.dataset.num_words == 10000 and cfg.dataset.validation_size == 10000
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (20, 512)
    assert cfg.model.rate == (0.5 if model == "imdb_dropout" else 0.0)


def test_command_line_beats_the_models_trainer_defaults():
    cfg = compose(["model=imdb_dense", "trainer.epochs=3"])
    assert cfg.trainer.epochs == 3 and cfg.trainer.batch_size == 512


def test_misspelled_key_fails_at_composition_naming_it():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["trainer.epocs=3"])
    assert "epocs" in str(err.value.__cause__ or err.value)


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["trainer.epochs=abc"])
    assert isinstance(err.value.__cause__, ValidationError)


def test_unknown_enum_value_lists_the_choices():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["hardware.accelerator=tpu"])
    assert "auto" in str(err.value.__cause__) and "gpu" in str(err.value.__cause__)


def test_unknown_group_option_lists_the_available_ones():
    with pytest.raises(ConfigCompositionException) as err:
        compose(["model=resnet"])
    assert "mnist_dense" in str(err.value) and "imdb_dropout" in str(err.value)


def test_explicit_model_dataset_mismatch_is_refused():
    cfg = compose(["model=imdb_dense", "dataset=mnist"])
    with pytest.raises(config.ConfigError, match="built for dataset=imdb"):
        config.validate(cfg)


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("optimizer.learning_rate=0", "optimizer.learning_rate"),
        ("optimizer.learning_rate=-1e-3", "optimizer.learning_rate"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("model.rate=1.0", "model.rate"),
        ("model.rate=-0.1", "model.rate"),
        ("trainer.monitor=val_acc", "trainer.monitor"),
    ],
)
def test_out_of_range_values_are_refused(override, fragment):
    cfg = compose([override])
    with pytest.raises(config.ConfigError, match=fragment.replace(".", r"\.")):
        config.validate(cfg)

