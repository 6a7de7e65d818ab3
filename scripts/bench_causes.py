"""Cost of ``lca allocate --causes``: the same iterations of a run allocated with and without.

Two copies of the run directory are allocated alternately (interleaved repeats, so a busy
machine slows both alike), each call timed whole (data, model, Adam's pre-pass, writing).

    python scripts/bench_causes.py RUN [RUN ...] --iterations 0:64 --repeats 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--iterations", default="0:64", help="A:B, as lca allocate takes it")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from lca.allocation import allocate

    a, b = (int(x) for x in args.iterations.split(":"))
    with tempfile.TemporaryDirectory() as scratch:
        for run in args.runs:
            copies = {}
            for causes in (False, True):
                copy = Path(scratch) / f"{run.name}_{'causes' if causes else 'plain'}"
                shutil.copytree(run, copy, ignore=shutil.ignore_patterns("lca.zarr", "report"))
                copies[causes] = copy
            seconds = {False: [], True: []}
            for _ in range(args.repeats):
                for causes in (False, True):
                    began = time.perf_counter()
                    summary = allocate(
                        copies[causes],
                        iterations=(a, b),
                        causes=causes,
                        threads=args.threads,
                        restart=True,
                        progress=False,
                    )
                    seconds[causes].append(time.perf_counter() - began)
            plain, with_causes = sum(seconds[False]), sum(seconds[True])
            print(
                f"{run.name}: iterations {a}:{b} ({summary.iterations_this_run} allocated), "
                f"{args.repeats} repeats: without {seconds[False]} s, with --causes "
                f"{seconds[True]} s; ratio {with_causes / plain:.3f}"
            )


if __name__ == "__main__":
    main()
