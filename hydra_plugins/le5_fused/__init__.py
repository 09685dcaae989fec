"""`hydra/launcher=fused`: a sweep's points trained together on JAX (Hydra instantiates plugins only from `hydra_plugins`)."""
