"""How a run was started (`Job`), its MLflow run name and the command that resumes it. No Keras: Hydra's entry
point fills a Job in before the backend is chosen."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.types import RunMode

from .. import overrides as ov
from ..sweeps.sweep import varied
from ..tracking.redaction import redact


@dataclass
class Job:
    """How a run was started, for its MLflow record; Hydra's entry point fills it in, a notebook may leave it."""

    choices: dict = field(default_factory=dict)  # config-group choices (tags; checked against each YAML's name)
    overrides: list[str] = field(default_factory=list)  # the command line's overrides
    name: str | None = None  # the MLflow run name; None: the model's name
    num: int | None = None  # a multirun job's number
    sweep_dir: Path | None = None  # a multirun's folder, where its MLflow parent run is recorded
    backup_dir: Path | None = None  # set by `record.identify`: the checkpoint folder, for the command that resumes

    @classmethod
    def of(cls, hc) -> "Job":
        """The Job of a Hydra job, from its HydraConfig (a lone run, a multirun job, a fused member)."""
        multirun = hc.mode == RunMode.MULTIRUN
        return cls(choices=dict(hc.runtime.choices), overrides=list(hc.overrides.task), name=run_name(hc),
                   num=hc.job.num if multirun else None, sweep_dir=Path(hc.sweep.dir) if multirun else None)


# What a run name leaves out besides the settings that do not change what is trained: Hydra's own keys, the model
# (the name's first word), the backend (a tag of its own) and the data folder (a name holds no paths).
NOT_IN_RUN_NAMES = (*ov.NOT_TRAINED, "hydra", "model", "backend", "data_dir")


def run_name(hc) -> str:
    """The model option; for a sweep job, with the job's own overrides of what it trains (mnist_dense
    optimizer.learning_rate=0.01), never a store URI or a folder."""
    name = hc.runtime.choices.get("model", "run")
    if hc.mode != RunMode.MULTIRUN:
        return name
    kept = varied(Path(hc.sweep.dir), list(hc.overrides.task))  # the keys the sweep varies, when it recorded them
    if kept is None:
        kept = ov.without(list(hc.overrides.task), NOT_IN_RUN_NAMES)
    return redact(" ".join([name, *(o for o in kept if ov.key(o) != "model")]))[:250]


def resume_command(job: Job) -> str:
    """The command line that resumes `job`: its overrides, with trainer.backup_dir naming its checkpoint."""
    return ov.train_command([*ov.without(job.overrides, ["trainer.backup_dir"]),
                             f"trainer.backup_dir={job.backup_dir}"])
