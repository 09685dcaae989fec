"""What never reaches MLflow: secret-looking names, override values and URL passwords (src/tracking/redaction.py).

Pure functions on strings, OmegaConf configs and a folder of Hydra's .hydra/*.yaml files; no run, no store.
The end-to-end check (a real run with secrets on its command line) is tests/test_security.py.
"""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import compose
from src.tracking import redaction


@pytest.mark.parametrize(
    "name,secret",
    [
        ("MLFLOW_TRACKING_PASSWORD", True),
        ("LE5_API_TOKEN", True),
        ("api_token", True),  # any case
        ("Db_Password", True),
        ("client_secret", True),
        ("aws_access_key_id", True),
        ("KEY", True),
        ("tracking.api_token", True),  # a dotted config key
        ("learning_rate", False),
        ("tracking_uri", False),
        ("experiment_name", False),
        ("", False),
    ],
)
def test_is_secret_matches_the_markers_in_any_case_anywhere_in_the_name(name, secret):
    assert redaction.is_secret(name) is secret


@pytest.mark.parametrize(
    "text,expected",
    [
        # Hydra overrides and override_dirname: the value of a secret-looking name goes, the name stays
        ("model=x,+db.password=p1,hydra.job.env_set.MY_KEY='a b'", "model=x,+db.password=***,hydra.job.env_set.MY_KEY=***"),
        ('tracking.api_token="t o k",seed=1', "tracking.api_token=***,seed=1"),
        ("Secret=s seed=2", "Secret=*** seed=2"),  # any case; a space ends the value too
        ("learning_rate=0.1,seed=3", "learning_rate=0.1,seed=3"),  # nothing secret: unchanged
        # the password of a URL's user:password@ part; the user, host and path stay
        ("https://alice:s3cret@mlflow.example.org/", "https://alice:***@mlflow.example.org/"),
        ("tracking.tracking_uri=http://bob:pw@h:5000/x", "tracking.tracking_uri=http://bob:***@h:5000/x"),
        ("http://h:5000/x", "http://h:5000/x"),  # a port is no password
        ("http://carol@h/", "http://carol@h/"),  # a user without a password
        ("", ""),
    ],
)
def test_redact_hides_secret_override_values_and_url_passwords(text, expected):
    assert redaction.redact(text) == expected


def test_scrub_drops_secret_keys_at_every_depth_and_redacts_every_string():
    """Lists are walked too; numbers, booleans and None are kept as they are."""
    node = {
        "api_key": "k",
        "db": {"password": "p", "uri": "postgresql://u:pw@db/x", "port": 5432},
        "urls": ["http://a:b@h/", {"token": "t", "name": "n"}, 3, None, True],
        7: "seven",  # a non-string key (YAML allows them) is checked by its text
    }
    assert redaction.scrub(node) == {
        "db": {"uri": "postgresql://u:***@db/x", "port": 5432},
        "urls": ["http://a:***@h/", {"name": "n"}, 3, None, True],
        7: "seven",
    }
    assert redaction.scrub("user=x,password=y") == "user=x,password=***"
    assert redaction.scrub(1.5) == 1.5


def test_params_are_the_resolved_config_flattened_without_secrets():
    cfg = OmegaConf.create(
        {
            "tracking": {"tracking_uri": "http://bob:pw@h:5000", "api_key": "k", "experiment_name": "e"},
            "trainer": {"epochs": "${seed}", "nested": {"deep": [1, 2]}},
            "seed": 3,
            "backup_dir": None,
        }
    )
    assert redaction.params(cfg) == {
        "tracking.tracking_uri": "http://bob:***@h:5000",
        "tracking.experiment_name": "e",
        "trainer.epochs": "3",  # resolved
        "trainer.nested.deep": "[1, 2]",
        "seed": "3",
        "backup_dir": "None",
    }


def test_params_of_the_composed_config_show_enums_by_their_value():
    flat = redaction.params(compose([]))
    assert flat["dataset.kind"] == "images" and flat["hardware.accelerator"] == "auto"
    assert flat["optimizer.learning_rate"] == "0.001" and flat["model.units"] == "[512]"
    assert not any(redaction.is_secret(name) for name in flat)


def test_config_yaml_is_the_resolved_config_without_secret_keys():
    cfg = OmegaConf.create(
        {"tracking": {"tracking_uri": "http://bob:pw@h:5000", "password": "p"}, "seed": 3, "epochs": "${seed}"}
    )
    text = redaction.config_yaml(cfg)
    assert yaml.safe_load(text) == {"tracking": {"tracking_uri": "http://bob:***@h:5000"}, "seed": 3, "epochs": 3}
    assert "pw" not in text and "password" not in text


def test_hydra_files_copies_every_yaml_scrubbed_and_verbatim_otherwise(tmp_path):
    """Interpolations stay unresolved (hydra.yaml refers to keys of Hydra's runtime); other files are not copied."""
    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "overrides.yaml").write_text("- seed=1\n- +tracking.api_token=tok123\n- hydra.job.env_set.LE5_KEY=k9\n")
    (hydra_dir / "hydra.yaml").write_text(
        "hydra:\n  run:\n    dir: outputs/${now:%Y}\n  job:\n    env_set:\n      LE5_KEY: k9\n      OTHER: v\n"
    )
    (hydra_dir / "config.yaml").write_text(
        "seed: 1\nepochs: ${seed}\ntracking:\n  api_token: tok123\nrate: 1.0e-05\ntag: 'yes'\nnote: null\n")
    (hydra_dir / "notes.txt").write_text("password=plain")
    into = tmp_path / "a" / "b"  # its parents do not exist yet

    assert redaction.hydra_files(hydra_dir, into) == into
    assert sorted(p.name for p in into.iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert yaml.safe_load((into / "overrides.yaml").read_text()) == [
        "seed=1", "+tracking.api_token=***", "hydra.job.env_set.LE5_KEY=***"
    ]
    assert yaml.safe_load((into / "hydra.yaml").read_text()) == {
        "hydra": {"run": {"dir": "outputs/${now:%Y}"}, "job": {"env_set": {"OTHER": "v"}}}
    }
    assert yaml.safe_load((into / "config.yaml").read_text()) == {  # every value as YAML read it, types included
        "seed": 1, "epochs": "${seed}", "tracking": {}, "rate": 1e-05, "tag": "yes", "note": None}

    # Again into the same folder (a resumed run logs them again): overwritten, no error
    (hydra_dir / "config.yaml").write_text("seed: 2\n")
    redaction.hydra_files(hydra_dir, into)
    assert yaml.safe_load((into / "config.yaml").read_text()) == {"seed": 2}
