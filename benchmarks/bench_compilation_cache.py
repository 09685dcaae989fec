"""JAX's persistent compilation cache (hardware.compilation_cache_dir): what the second of two identical runs and the
points of a basic-launcher sweep save by loading their programs instead of compiling them.

    LE5_DATA_DIR=/work/shared/data python -m benchmarks.bench_compilation_cache [--repeats 2] [--epochs 1]

Each side runs `python -m src.train backend=jax trainer.loop=compiled` processes: "off" with
hardware.compilation_cache_dir=null, "on" with a fresh, empty cache folder per repeat (so its first run is cold).
JAX reports every compile (JAX_LOG_COMPILES=1: "Finished XLA compilation of ... in S sec"); the compile seconds are
their sum in a process. Figures: compile seconds and wall time of run 1 and run 2, and of a 4-point sweep over the
learning rate (per point), with the ratio on/off.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import harness as h

COMPILED = re.compile(r"Finished XLA compilation of .*? in ([0-9.]+) ?(?:sec|s)\b")
HIT = re.compile(r"Persistent compilation cache hit")


def _train(ws: h.Workspace, cache: str | None, data_dir: Path, epochs: int, *extra: str) -> dict:
    command = [sys.executable, "-m", "src.train", *extra, *ws.project_overrides(
        "backend=jax", "trainer.loop=compiled", f"trainer.epochs={epochs}", "hardware=cpu", f"data_dir={data_dir}",
        f"hardware.compilation_cache_dir={cache if cache else 'null'}")]
    env = {**os.environ, "JAX_LOG_COMPILES": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.time()
    done = subprocess.run(command, cwd=h.ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.time() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    out = done.stdout + done.stderr
    return {"wall_s": wall, "compile_s": sum(float(s) for s in COMPILED.findall(out)),
            "compiles": len(COMPILED.findall(out)), "cache_hits": len(HIT.findall(out))}


def main() -> None:
    p = h.parser(__doc__.splitlines()[0], repeats=2)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    data_dir = h.data_dir(args)
    raw: dict[str, list] = {"off": [], "on": []}
    for r in range(args.repeats):
        for side in ("off", "on") if r % 2 == 0 else ("on", "off"):  # alternate which goes first
            ws = h.Workspace()
            with tempfile.TemporaryDirectory(prefix="le5-jax-cache-") as cache:
                folder = cache if side == "on" else None
                runs = [_train(ws, folder, data_dir, args.epochs) for _ in range(2)]
                sweep = _train(ws, folder if folder is None else str(Path(cache) / "sweep"), data_dir, args.epochs,
                               "-m", "optimizer.learning_rate=1e-3,2e-3,5e-3,1e-2")
            ws.close()
            raw[side].append({"run1": runs[0], "run2": runs[1], "sweep4": sweep})
            print(f"repeat {r + 1} {side}: run1 {runs[0]['wall_s']:.1f} s (compile {runs[0]['compile_s']:.2f} s), "
                  f"run2 {runs[1]['wall_s']:.1f} s (compile {runs[1]['compile_s']:.2f} s, hits "
                  f"{runs[1]['cache_hits']}), sweep of 4 {sweep['wall_s']:.1f} s (compile {sweep['compile_s']:.2f} s)",
                  flush=True)

    def med(side, what, key, per=1):
        return h.median([x[what][key] / per for x in raw[side]])

    rows, figures = [], {}
    for what, label, per in (("run1", "run 1 (cold)", 1), ("run2", "run 2 (same program)", 1),
                             ("sweep4", "4-point sweep, per point", 4)):
        off_c, on_c = med("off", what, "compile_s", per), med("on", what, "compile_s", per)
        off_w, on_w = med("off", what, "wall_s", per), med("on", what, "wall_s", per)
        figures[what] = {"compile_s_off": off_c, "compile_s_on": on_c, "wall_s_off": off_w, "wall_s_on": on_w,
                         "wall_ratio_on_off": on_w / off_w}
        rows.append([label, f"{off_c:.2f}", f"{on_c:.2f}", f"{off_w:.1f}", f"{on_w:.1f}", f"{on_w / off_w:.2f}x"])
    print()
    print(h.table(rows, ["", "compile s off", "compile s on", "wall s off", "wall s on", "wall on/off"]))
    h.write("bench_compilation_cache", args, figures, raw)


if __name__ == "__main__":
    main()
