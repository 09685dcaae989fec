"""What the data fingerprint costs a run: data.digest (the sha256 every run checks and records) cold and warm.

    python benchmarks/bench_data_digest.py [/work/shared/data/imdb.npz] [--tries 5]

Cold: no entry in the sha256 cache, once with the file dropped from the page cache (posix_fadvise
DONTNEED: read from disk) and once with it cached. Warm: the cache hit every later run gets. Target <= 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.path.join(os.environ.get("LE5_DATA_DIR", "/work/shared/data"), "imdb.npz")
    p.add_argument("file", nargs="?", default=default)
    p.add_argument("--tries", type=int, default=5)
    args = p.parse_args()
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp()  # a cache of its own, not the user's
    from src.data import datasets as data

    path = Path(args.file)

    def evict():
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

    def timed() -> float:
        t = time.perf_counter()
        data.digest(path)
        return time.perf_counter() - t

    disk, cached, hit = [], [], []
    for _ in range(args.tries):
        data._cache_file().unlink(missing_ok=True)
        evict()
        disk.append(timed())
        data._cache_file().unlink(missing_ok=True)
        cached.append(timed())
        hit.append(timed())

    def show(xs):
        return f"median {statistics.median(xs) * 1000:.1f} ms (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"

    print(f"{path} {path.stat().st_size / 1e6:.1f} MB, {args.tries} tries each")
    print("no sha256 cache, file not in the page cache:", show(disk))
    print("no sha256 cache, file in the page cache:    ", show(cached))
    print("sha256 cache hit (every later run):         ", show(hit))


if __name__ == "__main__":
    main()
