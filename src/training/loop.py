"""trainer.loop: which loop trains a run, and why. `fit` is keras.Model.fit; `compiled` is src/training/compiled.py
(JAX only: one compiled program per epoch over data on the device). `auto` picks compiled on JAX when the
device is a GPU or TPU and the training and validation data fit hardware.device_data_budget x its free
memory, and fit otherwise: on a CPU too, where compiled epochs measured no faster than fit (README,
"Compiled epochs (JAX)").

Imports neither Keras nor JAX at module level: `check` runs before the backend is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Accelerator, Backend, ConfigError, Loop, Strategy

# auto on a CPU device. Set from benchmarks/bench_compiled.py on the development machine (README).
AUTO_ON_CPU = Loop.fit


@dataclass(frozen=True)
class Resolved:
    loop: Loop  # fit or compiled
    why: str
    budget_bytes: int = 0  # compiled: the data budget on the device
    device: object = None  # compiled: the JAX device it trains on

    @property
    def compiled(self) -> bool:
        return self.loop == Loop.compiled


class FitLoop:
    """keras.Model.fit and evaluate behind the loop interface that compiled.Epochs also has:

        fit(epochs, initial_epoch, callbacks) -> History.history of this call's epochs
        evaluate(split) -> {metric: value} on the split "train", "val" or "test"

    so train() builds one loop and never branches on which. The model stays a plain keras.Model.
    """

    def __init__(self, model, ds, batch_size: int, seed: int, verbose: int = 2):
        self.model, self.ds, self.batch_size, self.seed, self.verbose = model, ds, batch_size, seed, verbose

    def fit(self, epochs: int, initial_epoch: int = 0, callbacks=None) -> dict[str, list[float]]:
        from . import batches  # imports Keras: after the backend is set

        return self.model.fit(
            **batches.fit_args(self.ds.train, self.batch_size, shuffle=True, seed=self.seed),
            validation_data=batches.validation_data(self.ds.val, self.batch_size),
            initial_epoch=initial_epoch,
            epochs=epochs,
            callbacks=callbacks,
            verbose=self.verbose,
        ).history

    def evaluate(self, split: str = "test") -> dict[str, float]:
        from . import batches  # imports Keras: after the backend is set

        return self.model.evaluate(**batches.fit_args(getattr(self.ds, split), self.batch_size), return_dict=True,
                                   verbose=0)


def trainer(resolved: "Resolved", model, ds, cfg):
    """The loop that trains `model` on `ds` as `resolved` says: FitLoop, or compiled.Epochs (JAX)."""
    if resolved.compiled:
        from .compiled import Epochs

        return Epochs(model, ds, cfg.trainer.batch_size, cfg.seed, resolved.budget_bytes, resolved.device,
                      verbose=cfg.trainer.verbose)
    return FitLoop(model, ds, cfg.trainer.batch_size, cfg.seed, cfg.trainer.verbose)


def check(cfg, backend: Backend) -> None:
    """Refuse trainer.loop=compiled where it cannot run, before Keras is imported."""
    if Loop(cfg.trainer.loop) != Loop.compiled:
        return
    if backend != Backend.jax:
        raise ConfigError(
            f"trainer.loop=compiled needs the JAX backend, but this run uses backend={backend.value}. "
            "Fix: backend=jax (pip install jax, or jax[cuda12] on GPU nodes), or trainer.loop=fit (or auto)."
        )
    if Strategy(cfg.hardware.strategy) != Strategy.default:
        raise ConfigError(
            "trainer.loop=compiled trains on one device, but hardware.strategy=mirrored asks for several. "
            "Fix: hardware=gpu (one GPU), or trainer.loop=fit for multi-GPU training."
        )


def resolve(cfg, backend: Backend, ds) -> Resolved:
    """The loop for this run (after `check`, with Keras imported and the data loaded) and why."""
    chosen = Loop(cfg.trainer.loop)
    if chosen == Loop.fit:
        return Resolved(Loop.fit, "trainer.loop=fit")
    if backend != Backend.jax:  # only auto gets here (check refused compiled)
        return Resolved(Loop.fit, f"trainer.loop=auto on backend={backend.value}: compiled epochs need JAX")
    if Strategy(cfg.hardware.strategy) != Strategy.default:
        return Resolved(Loop.fit, "trainer.loop=auto with hardware.strategy=mirrored: compiled epochs use one device")

    import jax

    from . import compiled

    # hardware=cpu in a process whose JAX already sees a GPU (an earlier run, a test session): still the CPU
    device = jax.devices("cpu")[0] if Accelerator(cfg.hardware.accelerator) == Accelerator.cpu else jax.devices()[0]
    free = compiled.free_device_bytes(device)
    budget = int(cfg.hardware.device_data_budget * free)
    needed = compiled.device_bytes(ds.train) + compiled.device_bytes(ds.val)
    sizes = (f"training + validation data {needed / 1e6:.1f} MB, budget {budget / 1e6:.1f} MB "
             f"= hardware.device_data_budget {cfg.hardware.device_data_budget} x {free / 1e6:.0f} MB free on {device.platform}")
    if chosen == Loop.compiled:
        streamed = "on the device" if needed <= budget else "streamed in chunks (over the budget)"
        return Resolved(Loop.compiled, f"trainer.loop=compiled; {sizes}: {streamed}", budget, device)
    if device.platform not in ("gpu", "tpu"):
        if AUTO_ON_CPU == Loop.compiled and needed <= budget:
            return Resolved(Loop.compiled, f"trainer.loop=auto on a CPU, where compiled epochs measured faster; {sizes}", budget, device)
        return Resolved(Loop.fit, "trainer.loop=auto on a CPU device: compiled epochs measured no faster than fit there")
    if needed > budget:
        return Resolved(Loop.fit, f"trainer.loop=auto: {sizes}: over the budget")
    return Resolved(Loop.compiled, f"trainer.loop=auto on a {device.platform.upper()}; {sizes}", budget, device)
