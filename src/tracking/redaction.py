"""What must never reach MLflow: secret-looking config keys, override values and URL passwords.

Params, the config artifact, Hydra's copied files, the overrides tag and the run name all pass through here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from omegaconf import OmegaConf

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML was built with it
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# Names that must never reach MLflow as params, tags or artifacts.
SECRET_MARKERS = ("TOKEN", "PASSWORD", "SECRET", "KEY")


def is_secret(name: str) -> bool:
    return any(marker in name.upper() for marker in SECRET_MARKERS)


# `name=value` pairs (Hydra overrides, override_dirname) whose name looks secret, and the
# password of a URL's user:password@ part (a tracking URI with credentials).
_SECRET_ASSIGNMENT = re.compile(
    r"([\w.+~/@-]*(?:%s)[\w.-]*)=('[^']*'|\"[^\"]*\"|[^,\s]*)" % "|".join(SECRET_MARKERS), re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+):[^@/\s]+@")
REDACTED = "***"


def redact(text: str) -> str:
    """`text` with secret-looking override values, URL passwords and the MLflow server's password replaced by ***."""
    text = _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    return _tracking_password(_URL_PASSWORD.sub(rf"\1:{REDACTED}@", text))


def _tracking_password(text: str) -> str:
    """The literal $MLFLOW_TRACKING_PASSWORD (src.tracking.auth exports it from the credentials file) out of `text`."""
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return text.replace(password, REDACTED) if password and len(password) >= 4 else text


def scrub(node):
    """A config/YAML container without secret-looking keys and with redacted strings."""
    if isinstance(node, dict):
        return {k: scrub(v) for k, v in node.items() if not is_secret(str(k))}
    if isinstance(node, list):
        return [scrub(v) for v in node]
    return redact(node) if isinstance(node, str) else node


def params(cfg) -> dict[str, str]:
    """The resolved config flattened to dotted keys, without secret-looking names or values."""
    flat: dict[str, str] = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            else:
                flat[name] = str(value)

    walk(scrub(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)), "")
    return flat


def config_yaml(cfg) -> str:
    """The resolved config as YAML, with secret-looking keys removed."""
    return OmegaConf.to_yaml(OmegaConf.create(scrub(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))))


def hydra_files(hydra_dir: Path, into: Path) -> Path:
    """Copies of Hydra's .hydra/*.yaml (config, hydra, overrides) with secrets scrubbed, in `into`.

    overrides.yaml and hydra.yaml hold the command line verbatim, `hydra.job.env_set` included.
    """
    # Plain YAML in and out, as Hydra wrote them (OmegaConf's load and dump took ~65 ms a point; PyYAML's C
    # parser ~4): interpolations are strings either way, and nothing here is resolved.
    into.mkdir(parents=True, exist_ok=True)
    for source in sorted(hydra_dir.glob("*.yaml")):
        content = yaml.load(source.read_text(), Loader=_LOADER)
        (into / source.name).write_text(yaml.dump(scrub(content), Dumper=_DUMPER, sort_keys=False,
                                                  default_flow_style=False, allow_unicode=True))
    return into
