"""Cost of recording θ every iteration: training with recording vs without, side by side.

    python scripts/bench_train.py                                   # MNIST-FC (Keras loader)
    python scripts/bench_train.py --set data.path=../shared/data/mnist.npz
    python scripts/bench_train.py configs/tiny_fc.yaml --repeats 5

Runs go in pairs, one with recording and one without, alternating which goes first, so that
drift of the machine hits both; the median of the pairs' ratios is the figure least moved by
the machine's noise. The loop time excludes start-up (data loading, model building, tracing). Target: recording adds ≤ 20 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from operator import truediv
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lca.config import load_config  # noqa: E402
from lca.training import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/mnist_fc_sgd.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=7, help="pairs of runs")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)

    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp) / "warmup", progress=False, record=False)  # data into the OS cache
        for i in range(args.repeats):
            for record in (True, False) if i % 2 == 0 else (False, True):
                result = train(
                    config, Path(tmp) / f"run{i}", progress=False, record=record, overwrite=True
                )
                times[record].append(result.seconds)
    T = config.training.iterations
    print(
        f"{config.name}: {T} iterations, {args.repeats} pairs of runs (one with recording, one"
        " without, alternating which goes first)"
    )
    for label, record in (("without recording", False), ("with recording", True)):
        best, median = min(times[record]), statistics.median(times[record])
        print(
            f"  training {label:18s}  best {best:6.2f} s  median {median:6.2f} s  "
            f"({1e3 * best / T:5.2f} ms/iteration)"
        )
    best = min(times[True]) / min(times[False]) - 1
    median = statistics.median(times[True]) / statistics.median(times[False]) - 1
    pairs = statistics.median(map(truediv, times[True], times[False])) - 1
    print(
        f"  recording overhead            best {100 * best:+5.1f} %  median {100 * median:+5.1f} %"
        f"  median of pairs {100 * pairs:+5.1f} %   (target ≤ +20 %)"
    )


if __name__ == "__main__":
    main()
