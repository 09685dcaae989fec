"""The data a run trained and was evaluated on, as MLflow dataset inputs (the UI's Dataset column).

Each split becomes one input: name `<dataset>/<split>` (MLflow keeps only one input per run for a
given name and digest, so three contexts under one name would collapse into one), digest the first
32 hex digits of the file's sha256 (MLflow's digest column holds 36 characters), source the file's
path, and input tags with the full sha256 and the split's sample count. Imports MLflow, never Keras.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
DIGEST_CHARS = 32


def records(name: str, path: Path, sha256: str, sizes: dict[str, int]) -> list[dict]:
    """One input per split, as `outbox.Outbox.log_inputs` takes them (JSON, so a lost store can get them later)."""
    source = get_dataset_source_from_json(json.dumps({"uri": str(Path(path).resolve())}), source_type="local")
    found = []
    for split, samples in sizes.items():
        # MetaDataset: the fingerprint without the data; the split's size is its profile (the UI shows it)
        dataset = MetaDataset(source=source, name=f"{name}/{split}", digest=sha256[:DIGEST_CHARS]).to_dict()
        dataset["profile"] = json.dumps({"num_rows": samples})
        tags = {"mlflow.data.context": CONTEXTS.get(split, split), "sha256": sha256, "samples": str(samples)}
        found.append({"dataset": dataset, "tags": tags})
    return found
