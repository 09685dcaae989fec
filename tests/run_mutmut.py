"""`python -m mutmut` for a package that is itself named `src` (README "Tests"):

    python tests/run_mutmut.py scope --max-children 2     # every mutant of SCOPE (the modules that do not train)
    python tests/run_mutmut.py score [MUTANTS_DIR ...]    # killed / generated per module, from the last runs
    python tests/run_mutmut.py run --max-children 1 "src.tracking.outbox.*"   # any subset; results, show NAME as in mutmut

mutmut 3 takes a top-level `src/` for a layout folder: it drops "src." from mutant names, while
the trampolines in the mutated code see the real module names (src.outbox), so no mutant would
ever be switched on (every one "survives"), and its stats collection asserts on "src." names.
This keeps the prefix in mutant names and drops that assert; nothing else changes.
"""

from __future__ import annotations

import collections
import inspect
import json
import sys
from pathlib import Path

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

# The code that does not train (issue 13): tracking store and run lifecycle, the outbox, resume's fingerprint
# and backup folder, the sweep summary, compare, redaction, config validation, the output-folder preflight.
SCOPE = (
    "src.tracking.store.*", "src.tracking.runs.*", "src.tracking.outbox.*",
    "src.training.resume.x_backup_dir*", "src.training.resume.x_fingerprint*", "src.training.resume.x_for_run*",
    "src.sweeps.sweep.x_summary*", "src.sweeps.sweep.x__overrides*",
    "src.compare.*", "src.tracking.redaction.*", "src.config.*", "src.preflight.*",
    "src.tracking.status.*", "src.sweeps.manifest.*",
)


def score(folders: list[Path]) -> int:
    """Print killed / generated per module of SCOPE (a timeout counts as killed, as in mutmut; a mutant that no
    test reaches, or that was never checked, counts against the score). Exit status 1 below 90%.

    `folders`: mutmut's `mutants/` folders (default ./mutants), so that parts of the scope run in separate
    checkouts of the same code add up: a later folder's result for a mutant wins, and where a module's file
    differs between folders, only the later folder's results for it count."""
    from fnmatch import fnmatchcase

    codes: dict[str, int | None] = {}
    sources: dict[str, bytes] = {}  # the mutated file each module's results belong to
    for mutants in folders:
        for meta in sorted(mutants.glob("src/**/*.py.meta")):  # the wings' modules too (src/tracking/store.py)
            module = ".".join(meta.relative_to(mutants).with_suffix("").with_suffix("").parts)  # src.tracking.store
            source = meta.with_suffix("").read_bytes()
            if sources.get(module, source) != source:  # another version of the file: its results alone count
                codes = {k: v for k, v in codes.items() if not k.startswith(f"{module}.")}
            sources[module] = source
            for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
                if code is not None or name not in codes:  # a checked result is not undone by "not checked"
                    codes[name] = code
    totals: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, code in codes.items():
        if any(fnmatchcase(name, pattern) for pattern in SCOPE):
            status = stats.status_by_exit_code[code]
            totals[name.rsplit(".", 1)[0].removeprefix("src.")][status] += 1  # tracking.store
    print(f"{'module':<18}{'killed':>8}{'of':>6}{'score':>8}   others")
    killed_all = generated_all = 0
    for module, counts in sorted(totals.items()):
        killed = counts["killed"] + counts["timeout"]
        generated = sum(counts.values())
        others = ", ".join(f"{n} {s}" + (" (counted killed)" if s == "timeout" else "")
                           for s, n in sorted(counts.items()) if s != "killed")
        print(f"{module:<18}{killed:>8}{generated:>6}{killed / generated:>8.1%}   {others}")
        killed_all, generated_all = killed_all + killed, generated_all + generated
    if not generated_all:
        print("no results: run `python tests/run_mutmut.py scope` first")
        return 1
    print(f"{'all':<18}{killed_all:>8}{generated_all:>6}{killed_all / generated_all:>8.1%}")
    return 0 if killed_all >= 0.9 * generated_all else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["score"]:
        sys.exit(score([Path(p) for p in sys.argv[2:]] or [Path("mutants")]))
    if sys.argv[1:2] == ["scope"]:
        sys.argv[1:] = ["run", *sys.argv[2:], *SCOPE]
    sys.argv[0] = "mutmut"
    sys.exit(cli())
