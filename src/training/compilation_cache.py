"""JAX's persistent compilation cache: each compiled program is kept on disk, so the next run of the same program (the
next point of a basic-launcher or SLURM-array sweep, a resumed run) loads it instead of compiling again.

`hardware.compilation_cache_dir`: "auto" (the default) is the user's cache folder, `$XDG_CACHE_HOME/le5/jax` (else
`~/.cache/le5/jax`); a path (a shared folder for a cluster); null turns the cache off. A folder that cannot be
created or written degrades to compiling, with one warning line. A corrupt entry is JAX's to handle: it warns and
compiles (`jax_raise_persistent_cache_errors` stays off). Set through JAX's environment variables, which JAX reads
at its import (backend.activate calls `enable` before it), or its config where JAX is imported already.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

AUTO = "auto"
DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
# JAX caches only programs that took ≥ 1 s to compile by default; the lab's nets compile in 0.3-2 s on a CPU
MIN_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def folder(configured: str | None) -> Path | None:
    """The cache folder `hardware.compilation_cache_dir` names (None: off)."""
    if configured is None or str(configured).lower() in ("", "off", "none", "null", "false"):
        return None
    if configured == AUTO:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "le5" / "jax"
    return Path(os.path.expandvars(str(configured))).expanduser()


def unusable(path: Path) -> str | None:
    """Why `path` cannot hold the cache (None: it can): created if missing, then a probe file written and removed."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as err:
        return f"{err.strerror or err} ({path})"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"not readable ({path})"
    return None


def enable(configured: str | None) -> Path | None:
    """Point JAX at the cache folder, if it is usable; the folder in use (None: JAX compiles every program)."""
    path = folder(configured)
    if path is not None and (why := unusable(path)):
        log.warning("JAX compilation cache off: %s; every program compiles. Fix: hardware.compilation_cache_dir="
                    "<a writable folder>, or null to silence this", why)
        path = None
    if path is None:
        os.environ.pop(DIR_ENV, None)
        if "jax" in sys.modules:  # an earlier run in this process turned it on
            sys.modules["jax"].config.update("jax_compilation_cache_dir", None)
        return None
    os.environ[DIR_ENV] = str(path)
    os.environ.setdefault(MIN_TIME_ENV, "0")
    if "jax" in sys.modules:  # imported already (a test process, a second run in one process): its config, not env
        jax = sys.modules["jax"]
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ[MIN_TIME_ENV]))
    return path


def describe(configured: str | None) -> tuple[bool, str]:
    """python -m src.doctor's line: whether the cache works here, and where."""
    path = folder(configured)
    if path is None:
        return True, "JAX compilation cache: off (hardware.compilation_cache_dir=null)"
    if why := unusable(path):
        return False, (f"JAX compilation cache: unusable, {why}; runs compile every program. "
                       "Fix: hardware.compilation_cache_dir=<a writable folder>")
    entries = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    size = sum(p.stat().st_size for p in entries) / 2**20
    return True, f"JAX compilation cache: {path} ({len(entries)} programs, {size:.1f} MiB)"
