"""`python -m mutmut` for a package that is itself named `src` (README "Tests"):

    python tests/run_mutmut.py run --max-children 1 "src.outbox.*"
    python tests/run_mutmut.py results

mutmut 3 takes a top-level `src/` for a layout folder: it drops "src." from mutant names, while
the trampolines in the mutated code see the real module names (src.outbox), so no mutant would
ever be switched on (every one "survives"), and its stats collection asserts on "src." names.
This keeps the prefix in mutant names and drops that assert; nothing else changes.
"""

from __future__ import annotations

import inspect
import sys

import mutmut.mutation.trampoline as trampoline
import mutmut.stats as stats
import mutmut.utils.format_utils as format_utils
from mutmut.__main__ import cli

_strip_prefix = format_utils.strip_prefix


def _keep_src(s: str, *, prefix: str, strict: bool = False) -> str:
    return s if prefix == "src." else _strip_prefix(s, prefix=prefix, strict=strict)


format_utils.strip_prefix = _keep_src
source = inspect.getsource(stats.record_trampoline_hit)
assert 'assert not name.startswith("src.")' in source, "mutmut changed: check whether this wrapper is still needed"
exec(source.replace('assert not name.startswith("src.")', "pass  #"), stats.__dict__)
trampoline.record_trampoline_hit = stats.record_trampoline_hit

if __name__ == "__main__":
    sys.argv[0] = "mutmut"
    sys.exit(cli())
