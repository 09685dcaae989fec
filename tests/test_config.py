"""Composition and its checks: every option of every group, the schema's refusals, the range and pairing checks,
and the helpers around them (options, register, the quoting hint for non-ASCII overrides, the metric's direction)."""

from __future__ import annotations

import copy
import functools
import re
import shutil

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from conftest import ROOT, compose
from src import config
from src.errors import UserError

# Derived from conf/, never typed by hand: a new option is composed and validated by the tests below.
GROUPS = {g: sorted(p.stem for p in (ROOT / "conf" / g).glob("*.yaml")) for g in ("dataset", "model", "optimizer", "hardware")}


@pytest.mark.parametrize(
    "group,option", [(g, o) for g, options in GROUPS.items() for o in options], ids=lambda v: str(v)
)
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if group == "dataset":  # the default model must take the dataset: pick the first model that does
        kind = config.options("dataset")[option]["kind"]
        overrides.append("model=" + next(m for m, y in config.options("model").items() if y["accepts"] == kind))
    cfg = compose(overrides)
    assert cfg[group].name == option
    config.validate(cfg, {group: option})


HYDRA_OPTIONS = [f"hydra/{p.parent.name}={p.stem}" for p in sorted((ROOT / "conf" / "hydra").glob("*/*.yaml"))]


@pytest.mark.parametrize("override", [None, "hydra/sweeper=basic", "+experiment=mnist_optuna", *HYDRA_OPTIONS])
def test_no_config_is_named_like_a_schema_so_hydra_warns_of_nothing(override, recwarn):
    # conf/hydra/sweeper/basic.yaml was validated against Hydra's own hydra/sweeper/basic schema: a deprecation
    # warning on every multirun and in every test that composed (Hydra 1.1's automatic schema matching). The
    # project's grid sweeper is now the ConfigStore's `basic` node itself (hydra_plugins/le5_sweep/sweeper.py).
    from hydra.core.hydra_config import HydraConfig

    compose([override] if override else [])
    assert HydraConfig.get().sweeper._target_.startswith("hydra_plugins.le5_")  # the project's sweepers, by default too
    assert not [w for w in recwarn if "ConfigStore schema" in str(w.message)]


def test_every_group_has_options_and_the_lab_defaults_exist():
    assert all(GROUPS.values()), GROUPS
    assert {"mnist", "imdb"} <= set(GROUPS["dataset"])
    assert {"mnist_dense", "imdb_dense", "imdb_dropout"} <= set(GROUPS["model"])


def test_every_model_yaml_names_a_builder():
    from src.training import models

    assert set(GROUPS["model"]) <= set(models.MODELS)


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


def test_explicit_model_dataset_mismatch_is_refused_naming_the_compatible_options():
    cfg = compose(["model=imdb_dense", "dataset=mnist"])
    with pytest.raises(config.ConfigError, match="model=imdb_dense takes sequences, but dataset=mnist gives images") as err:
        config.validate(cfg)
    message = str(err.value)
    assert "choose a dataset for imdb_dense: imdb" in message
    assert "a model for mnist: mnist_cnn, mnist_dense" in message


def test_a_shape_mismatch_is_refused_too():
    cfg = compose(["dataset.shape=[32,32,3]"])
    with pytest.raises(config.ConfigError, match=r"takes images of shape \[28, 28\], but dataset=mnist gives images of shape \[32, 32, 3\]"):
        config.validate(cfg)


def test_a_yaml_whose_name_differs_from_its_option_is_refused():
    cfg = compose(["model.name=mnist_dense"])
    config.validate(cfg, {"model": "mnist_dense"})
    with pytest.raises(config.ConfigError, match="conf/model/mlp.yaml says model.name='mnist_dense'"):
        config.validate(cfg, {"model": "mlp"})


def test_backend_is_checked_at_composition():
    assert compose(["backend=jax"]).backend.value == "jax"
    with pytest.raises(ConfigCompositionException) as err:
        compose(["backend=theano"])
    assert "tensorflow" in str(err.value.__cause__) and "jax" in str(err.value.__cause__)


def test_experiment_defaults_to_the_dataset_name():
    assert config.experiment_name(compose([])) == "mnist"
    assert config.experiment_name(compose(["model=imdb_dropout"])) == "imdb"
    assert config.experiment_name(compose(["tracking.experiment_name=mine"])) == "mine"


def test_metric_direction():
    assert config.best([0.3, 0.1, 0.2], "val_loss") == 0.1
    assert config.best([0.3, 0.1, 0.2], "val_accuracy") == 0.3
    assert config.lower_is_better("loss") and not config.lower_is_better("accuracy")


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



@pytest.mark.parametrize(
    "override",
    ["optimizer.learning_rate=inf", "optimizer.learning_rate=-inf", "optimizer.momentum=nan", "model.l2=inf",
     "hardware.device_data_budget=nan", "tracking.system_metrics_interval=inf", "dataset.scale=inf"],
)
def test_non_finite_numbers_are_refused_at_validation(override):
    """inf passed `> 0` and started a run that failed ~10 s later; every float must be finite."""
    key, value = override.split("=")
    with pytest.raises(config.ConfigError, match=re.escape(f"{key}={float(value)}: must be a finite number")):
        config.validate(compose([override]))


def case_id(value) -> str:
    """A short ASCII test id (mutmut reruns tests by id, and quotes or non-ASCII in ids do not survive that)."""
    if isinstance(value, dict):
        value = ",".join(f"{k.replace('__', '.')}={v}" for k, v in value.items()) or "defaults"
    elif isinstance(value, list):
        value = "+".join(map(str, value)) or "nothing"
    return re.sub(r"[^\w.=,+-]+", "_", str(value), flags=re.ASCII)[:40]


# --- validate on one composed config per model, changed in memory: composing per case would cost a second each ---


@pytest.fixture(scope="module")
def composed():
    """The default (MNIST) and the IMDB model's composed configs; each test edits a copy."""
    return {"mnist": compose([]), "imdb": compose(["model=imdb_dense"])}


def edited(composed, base: str, **values):
    """A copy of a composed config with `values` set as `key=value` overrides would set them (dots as "__")."""
    cfg = copy.deepcopy(composed[base])
    for key, value in values.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
    return cfg


@pytest.mark.parametrize(
    "base,values",
    [
        ("mnist", {}),
        ("imdb", {}),
        ("mnist", {"trainer__epochs": 1, "trainer__batch_size": 1, "dataset__validation_size": 1}),
        ("mnist", {"dataset__num_classes": 2, "hardware__steps_per_execution": 1}),
        ("mnist", {"trainer__early_stopping_patience": 0}),
        ("mnist", {"trainer__monitor": "val_accuracy"}),
        ("mnist", {"trainer__monitor": "loss"}),
        ("mnist", {"trainer__monitor": "accuracy"}),
        ("mnist", {"optimizer__learning_rate": 1e-9, "optimizer__momentum": 0.0}),
        ("mnist", {"optimizer__momentum": 0.99}),
        ("mnist", {"model__rate": 0.0, "model__l2": 0.0}),
        ("mnist", {"model__rate": 0.99, "model__l2": 1e-4}),
        ("mnist", {"model__units": [1, 1]}),
        ("mnist", {"model__units": []}),
        ("mnist", {"hardware__device_data_budget": 1.0}),
        ("mnist", {"hardware__device_data_budget": 0.01}),
        ("mnist", {"model__input_shape": None, "dataset__shape": [1, 1]}),
        ("mnist", {"model__input_shape": None, "dataset__shape": [1, 1, 1]}),
        ("mnist", {"model__input_shape": None, "dataset__shape": [32, 32, 3]}),
        ("mnist", {"hardware__accelerator": "cpu"}),
        ("mnist", {"hardware__strategy": "mirrored", "hardware__accelerator": "gpu"}),
        ("mnist", {"tracking__system_metrics_interval": 0.001}),
        ("imdb", {"dataset__num_words": 4, "dataset__num_bins": 0}),
        ("imdb", {"dataset__num_bins": 1024}),
        ("mnist", {"seed": 0}),
        ("mnist", {"seed": 2**32 - 1}),
    ],
    ids=case_id,
)
def test_values_at_the_edge_of_their_range_are_accepted(composed, base, values):
    """The limits are inclusive where the messages say >= and [0, ...: the smallest legal value passes."""
    config.validate(edited(composed, base, **values))


@pytest.mark.parametrize(
    "base,values,problem",
    [
        ("mnist", {"trainer__epochs": 0}, "trainer.epochs=0: must be >= 1"),
        ("mnist", {"trainer__batch_size": 0}, "trainer.batch_size=0: must be >= 1"),
        ("mnist", {"dataset__validation_size": 0}, "dataset.validation_size=0: must be >= 1"),
        ("mnist", {"dataset__num_classes": 1}, "dataset.num_classes=1: must be >= 2"),
        ("mnist", {"hardware__steps_per_execution": 0}, "hardware.steps_per_execution=0: must be >= 1"),
        (
            "mnist",
            {"trainer__early_stopping_patience": -1},
            "trainer.early_stopping_patience=-1: must be >= 0 (or null)",
        ),
        ("mnist", {"trainer__monitor": "val_acc"}, "trainer.monitor='val_acc': choose from val_loss, val_accuracy, loss, accuracy"),
        ("mnist", {"trainer__monitor": "val_loss2"}, "trainer.monitor='val_loss2': choose from val_loss, val_accuracy, loss, accuracy"),
        ("mnist", {"seed": -5}, "seed=-5: must be in [0, 2**32)"),
        ("mnist", {"seed": 2**32}, "seed=4294967296: must be in [0, 2**32)"),
        ("mnist", {"optimizer__learning_rate": 0}, "optimizer.learning_rate=0.0: must be > 0"),
        ("mnist", {"optimizer__learning_rate": -0.001}, "optimizer.learning_rate=-0.001: must be > 0"),
        ("mnist", {"optimizer__momentum": 1.0}, "optimizer.momentum=1.0: must be in [0, 1)"),
        ("mnist", {"optimizer__momentum": -0.1}, "optimizer.momentum=-0.1: must be in [0, 1)"),
        ("mnist", {"model__rate": 1.0}, "model.rate=1.0: a dropout rate must be in [0, 1)"),
        ("mnist", {"model__rate": -0.1}, "model.rate=-0.1: a dropout rate must be in [0, 1)"),
        ("mnist", {"model__l2": -0.01}, "model.l2=-0.01: an L2 penalty must be >= 0"),
        ("mnist", {"model__units": [16, 0]}, "model.units=[16, 0]: every layer needs >= 1 unit"),
        ("mnist", {"hardware__device_data_budget": 0.0}, "hardware.device_data_budget=0.0: a fraction in (0, 1]"),
        ("mnist", {"hardware__device_data_budget": 1.5}, "hardware.device_data_budget=1.5: a fraction in (0, 1]"),
        ("imdb", {"dataset__num_words": 3}, "dataset.num_words=3: must be >= 4 (indices 0-3 are reserved)"),
        ("imdb", {"dataset__num_words": None}, "dataset.num_words=None: must be >= 4 (indices 0-3 are reserved)"),
        ("imdb", {"dataset__num_bins": -1}, "dataset.num_bins=-1: must be >= 0 (0 = no bigram columns)"),
        *[
            (
                "mnist",
                {"model__input_shape": None, "dataset__shape": shape},
                f"dataset.shape={shape}: images need [height, width] or [height, width, channels]",
            )
            for shape in (None, [], [28], [28, 28, 1, 1], [28, 0], [0, 28, 1])
        ],
        (
            "mnist",
            {"hardware__strategy": "mirrored", "hardware__accelerator": "cpu"},
            "hardware.strategy=mirrored with hardware.accelerator=cpu: use hardware=multi_gpu or hardware=cpu",
        ),
        (
            "mnist",
            {"tracking__system_metrics_interval": 0.0},
            "tracking.system_metrics_interval=0.0: must be > 0 seconds",
        ),
    ],
    ids=case_id,
)
def test_an_out_of_range_value_is_refused_with_its_allowed_range(composed, base, values, problem):
    """Each check's message names the key, the value given and what is allowed."""
    with pytest.raises(config.ConfigError) as err:
        config.validate(edited(composed, base, **values))
    assert str(err.value) == "invalid configuration:\n  " + problem


def test_every_problem_is_listed_at_once_in_a_fixed_order(composed):
    """One refusal lists them all, so a user fixes everything in one go; it is a UserError (no traceback)."""
    cfg = edited(
        composed, "mnist", trainer__epochs=0, trainer__monitor="acc", model__rate=1.5, model__name="mlp", dataset__shape=[32, 32, 3]
    )
    with pytest.raises(config.ConfigError) as err:
        config.validate(cfg, {"model": "mnist_dense"})
    assert isinstance(err.value, UserError)
    assert str(err.value) == (
        "invalid configuration:\n"
        "  trainer.epochs=0: must be >= 1\n"
        "  trainer.monitor='acc': choose from val_loss, val_accuracy, loss, accuracy\n"
        "  model.rate=1.5: a dropout rate must be in [0, 1)\n"
        "  conf/model/mnist_dense.yaml says model.name='mlp': a model's name must equal its file's name "
        "(MLflow tags the run model=mnist_dense). Fix: set name: mnist_dense in that file.\n"
        "  model=mlp takes images of shape [28, 28], but dataset=mnist gives images of shape [32, 32, 3].\n"
        "    Fix: drop the dataset= override (each model selects its dataset), choose a dataset for mlp: mnist,\n"
        "    or a model for mnist: (none in conf/model: add one, README: Adding a model)"
    )


@pytest.mark.parametrize(
    "choices",
    [None, {}, {"model": "mnist_dense"}, {"dataset": "mnist"}, {"model": "mnist_dense", "dataset": "mnist", "hardware": "x"}],
    ids=case_id,
)
def test_choices_that_match_the_yaml_names_pass(composed, choices):
    """Hydra's choices are optional, and groups other than model and dataset are not compared."""
    config.validate(composed["mnist"], choices)


@pytest.mark.parametrize(
    "choices,problem",
    [
        (
            {"dataset": "fashion"},
            "conf/dataset/fashion.yaml says dataset.name='mnist': a dataset's name must equal its file's name "
            "(MLflow tags the run dataset=fashion). Fix: set name: fashion in that file.",
        ),
        (
            {"model": "mlp", "dataset": "mnist"},
            "conf/model/mlp.yaml says model.name='mnist_dense': a model's name must equal its file's name "
            "(MLflow tags the run model=mlp). Fix: set name: mlp in that file.",
        ),
    ],
    ids=case_id,
)
def test_a_yaml_named_unlike_its_file_is_refused_with_the_fix(composed, choices, problem):
    """The run is tagged with the option's file name, so the YAML's `name` must agree; the message says which line to set."""
    with pytest.raises(config.ConfigError) as err:
        config.validate(composed["mnist"], choices)
    assert str(err.value) == "invalid configuration:\n  " + problem


FIX = "    Fix: drop the dataset= override (each model selects its dataset), choose a dataset for "


@pytest.fixture(scope="module")
def crossed():
    """A model given the other kind's dataset, both ways, as `model=... dataset=...` on the command line composes them."""
    return {"imdb_dense+mnist": compose(["model=imdb_dense", "dataset=mnist"]), "mnist_dense+imdb": compose(["dataset=imdb"])}


@pytest.mark.parametrize(
    "case,problem",
    [
        (
            "imdb_dense+mnist",
            "model=imdb_dense takes sequences, but dataset=mnist gives images of shape [28, 28].\n"
            + FIX
            + "imdb_dense: imdb,\n    or a model for mnist: mnist_cnn, mnist_dense",
        ),
        (
            "mnist_dense+imdb",
            "model=mnist_dense takes images of shape [28, 28], but dataset=imdb gives sequences.\n"
            + FIX
            + "mnist_dense: mnist,\n    or a model for imdb: imdb_dense, imdb_dropout",
        ),
    ],
)
def test_a_model_given_the_other_kind_of_dataset_is_refused_with_the_options_that_fit(crossed, case, problem):
    """The fix lists, from conf/, the datasets the model takes and the models that take the dataset."""
    with pytest.raises(config.ConfigError) as err:
        config.validate(crossed[case])
    assert str(err.value) == "invalid configuration:\n  " + problem


@pytest.mark.parametrize(
    "base,values,problem",
    [
        (
            "mnist",
            {"model__input_shape": [32, 32]},
            "model=mnist_dense takes images of shape [32, 32], but dataset=mnist gives images of shape [28, 28].\n"
            + FIX
            + "mnist_dense: (none in conf/dataset: add one, README: Adding a dataset),\n"
            "    or a model for mnist: mnist_cnn, mnist_dense",
        ),
        (
            "mnist",
            {"dataset__shape": [28, 28, 3]},
            "model=mnist_dense takes images of shape [28, 28], but dataset=mnist gives images of shape [28, 28, 3].\n"
            + FIX
            + "mnist_dense: mnist,\n    or a model for mnist: (none in conf/model: add one, README: Adding a model)",
        ),
        (
            "imdb",
            {"model__accepts": "images"},
            "model=imdb_dense takes images, but dataset=imdb gives sequences.\n"
            + FIX
            + "imdb_dense: mnist,\n    or a model for imdb: imdb_dense, imdb_dropout",
        ),
    ],
    ids=case_id,
)
def test_a_shape_or_kind_no_option_fits_says_how_to_add_one(composed, base, values, problem):
    """Where nothing in conf/ fits, the fix points to the README section that adds one."""
    with pytest.raises(config.ConfigError) as err:
        config.validate(edited(composed, base, **values))
    assert str(err.value) == "invalid configuration:\n  " + problem


def test_every_option_that_fits_is_listed(crossed, tmp_path, monkeypatch):
    """With a second 28x28 image dataset in conf/, the fix offers both, comma-separated, in name order."""
    conf = tmp_path / "conf"
    for group in ("model", "dataset"):
        shutil.copytree(ROOT / "conf" / group, conf / group)
    (conf / "dataset" / "fashion.yaml").write_text("name: fashion\nkind: images\nfile: f.npz\nshape: [28, 28]\n")
    monkeypatch.setattr(config, "options", functools.partial(config.options, conf_dir=conf))  # read the copy
    with pytest.raises(config.ConfigError) as err:
        config.validate(crossed["mnist_dense+imdb"])
    assert str(err.value).endswith(FIX + "mnist_dense: fashion, mnist,\n    or a model for imdb: imdb_dense, imdb_dropout")


def test_a_model_without_input_shape_takes_any_shape_of_its_kind(composed):
    """input_shape=null: the model adapts to the dataset's shape; only the kind must agree."""
    config.validate(edited(composed, "mnist", model__input_shape=None, dataset__shape=[64, 48, 3]))


# --- the options of a group, as found in conf/ ---


def test_options_reads_every_yaml_of_a_group_in_name_order(tmp_path):
    """Plain files are the option's dict, `@package _global_` files give their group's part, anything else {}."""
    group = tmp_path / "model"
    group.mkdir()
    (group / "b_global.yaml").write_text("# @package _global_\nmodel:\n  name: b_global\n  units: [4]\ntrainer:\n  epochs: 3\n")
    (group / "a_plain.yaml").write_text("name: a_plain\naccepts: images\n")
    (group / "c_list.yaml").write_text("- 1\n- 2\n")
    (group / "d_empty.yaml").write_text("")
    (group / "notes.txt").write_text("name: not an option\n")
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "other.yaml").write_text("name: other\n")

    found = config.options("model", tmp_path)
    assert list(found) == ["a_plain", "b_global", "c_list", "d_empty"]
    assert found == {
        "a_plain": {"name": "a_plain", "accepts": "images"},
        "b_global": {"name": "b_global", "units": [4]},
        "c_list": {},
        "d_empty": {},
    }
    assert config.options("optimizer", tmp_path) == {}  # a group without a folder has no options


def test_options_default_to_the_projects_conf():
    """Without a folder, options() reads conf/: what validate's fix lists come from."""
    models, datasets = config.options("model"), config.options("dataset")
    assert list(models) == GROUPS["model"] and list(datasets) == GROUPS["dataset"]
    assert models["mnist_dense"] == {"name": "mnist_dense", "accepts": "images", "input_shape": [28, 28], "units": [512]}
    assert datasets["mnist"]["shape"] == [28, 28] and datasets["imdb"]["kind"] == "sequences"


def test_register_stores_the_schema_that_conf_config_yaml_starts_from(monkeypatch):
    """conf/config.yaml's defaults begin with base_config: register() must put the Config schema under that name."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    monkeypatch.setattr(store, "repo", {k: v for k, v in store.repo.items() if k != "base_config.yaml"})  # restored after
    config.register()
    node = store.load("base_config.yaml").node
    assert OmegaConf.get_type(node) is config.Config
    assert node.trainer.epochs == 5 and node.seed == 42


# --- command-line names, the metric's direction ---

QUOTE_HINT = ": Hydra reads non-ASCII characters only inside quotes.\nFix: quote the value for Hydra, and the whole override for the shell: "


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["trainer.epochs=1", "model=imdb_dense"],
        ['tracking.experiment_name="Größe"'],
        ["tracking.experiment_name='Größe'"],
        ["tracking.experiment_name='学习率' + \"é\""],
        ["--multirun", "--config-path=/tmp/Größe"],
        *[[flag, "/tmp/Größe", "trainer.epochs=1"] for flag in ("-cp", "-cn", "-cd", "--config-path", "--config-name", "--config-dir")],
    ],
    ids=case_id,
)
def test_quoted_non_ascii_flags_and_their_values_pass(argv):
    """Only overrides are checked; a flag's separate value (-cd /tmp/Größe) is a path, not an override."""
    assert config.unquoted_non_ascii(argv) is None


@pytest.mark.parametrize(
    "argv,hint",
    [
        (["tracking.experiment_name=Größe"], "tracking.experiment_name=Größe" + QUOTE_HINT + """'tracking.experiment_name="Größe"'"""),
        (["a=1", "b=é", "c=ü"], "b=é" + QUOTE_HINT + """'b="é"'"""),
        (["-m", "x=ß,y"], "x=ß,y" + QUOTE_HINT + """'x="ß,y"'"""),  # -m takes no value: the next word is an override
        (["-cn", "config", "x=ß"], "x=ß" + QUOTE_HINT + """'x="ß"'"""),
        (["x=a=ß"], "x=a=ß" + QUOTE_HINT + """'x="a=ß"'"""),  # the key ends at the first "="
        (["x='a'ß"], "x='a'ß" + QUOTE_HINT + """'x="'a'ß"'"""),
        (['x="a"ß'], 'x="a"ß' + QUOTE_HINT + """'x=""a"ß"'"""),
    ],
    ids=case_id,
)
def test_the_first_unquoted_non_ascii_override_gets_a_ready_to_paste_fix(argv, hint):
    """Hydra's own error for it is a bare LexerNoViableAltException; this one names the override and the quoting."""
    assert config.unquoted_non_ascii(argv) == hint


@pytest.mark.parametrize("monitor,lower", [("val_loss", True), ("loss", True), ("val_accuracy", False), ("accuracy", False)])
def test_the_best_value_is_the_lowest_loss_or_the_highest_accuracy(monitor, lower):
    """best() picks by the monitor's direction, on plain values or on records through `key`."""
    assert config.lower_is_better(monitor) is lower
    assert config.best([0.3, 0.1, 0.2], monitor) == (0.1 if lower else 0.3)
    runs = [("a", 0.3), ("b", 0.1), ("c", 0.2)]
    assert config.best(runs, monitor, key=lambda run: run[1]) == (("b", 0.1) if lower else ("a", 0.3))


def test_experiment_name_is_the_tracking_setting_else_the_dataset():
    """A run lands in tracking.experiment_name when set (even to a dataset's name), else in its dataset's experiment."""
    cfg = OmegaConf.create({"tracking": {"experiment_name": None}, "dataset": {"name": "imdb"}})
    assert config.experiment_name(cfg) == "imdb"
    cfg.tracking.experiment_name = "mine"
    assert config.experiment_name(cfg) == "mine"
