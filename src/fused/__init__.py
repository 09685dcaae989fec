"""The fused wing: hydra/launcher=fused, a sweep's points trained together as one compiled JAX program.

- `launch`: grouping the points, each member's run (through `src.training.record`), the group's training loop
- `vmapped`: the program (one jitted epoch: `lax.scan` over batches of `jax.vmap` over members)

May import: every wing below it (training, sweeps, tracking, data, report) and the foundation.
"""
