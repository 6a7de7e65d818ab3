"""Cost of recording θ every iteration: training with recording vs without, side by side.

    python scripts/bench_train.py                                   # MNIST-FC (Keras loader)
    python scripts/bench_train.py --set data.path=../shared/data/mnist.npz
    python scripts/bench_train.py configs/tiny_fc.yaml --repeats 5

Runs go in rounds, one with recording (resume checkpoints and crc32c checksums included, as
`lca train` does), one without, one recording without checksums (their cost),
and with ``--checkpoints`` one recording without checkpoints, the order rotating
each round so that drift of the machine hits all; the median of the rounds' ratios is the
figure least moved by the machine's noise. The loop time excludes start-up (data loading,
model building, tracing). Target: recording adds ≤ 20 %.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from operator import truediv
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lca.config import load_config  # noqa: E402
from lca.storage import without_checksums  # noqa: E402
from lca.training import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/mnist_fc_sgd.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=7, help="rounds of runs")
    parser.add_argument(
        "--checkpoints",
        action="store_true",
        help="also record without resume checkpoints, to measure what they cost",
    )
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)

    # mode: (record, checkpoints, checksums)
    modes = {
        "without recording": (False, False, True),
        "with recording": (True, True, True),
        "recording, no checksums": (True, True, False),
    }
    if args.checkpoints:
        modes["recording, no checkpoints"] = (True, False, True)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp) / "warmup", progress=False, record=False)  # data into the OS cache
        order = list(modes)
        for i in range(args.repeats):
            for mode in order[i % len(order) :] + order[: i % len(order)]:
                record, checkpoints, checksums = modes[mode]
                with contextlib.nullcontext() if checksums else without_checksums():
                    result = train(
                        config,
                        Path(tmp) / f"run{i}",
                        progress=False,
                        record=record,
                        checkpoints=checkpoints,
                        overwrite=True,
                    )
                times[mode].append(result.seconds)
    T = config.training.iterations
    print(
        f"{config.name}: {T} iterations, {args.repeats} rounds of {len(modes)} runs "
        "(the order rotating each round)"
    )
    for mode in modes:
        best, median = min(times[mode]), statistics.median(times[mode])
        print(
            f"  training {mode:26s}  best {best:6.2f} s  median {median:6.2f} s  "
            f"({1e3 * best / T:5.2f} ms/iteration)"
        )

    def overhead(mode: str, base: str) -> str:
        best = min(times[mode]) / min(times[base]) - 1
        median = statistics.median(times[mode]) / statistics.median(times[base]) - 1
        pairs = statistics.median(map(truediv, times[mode], times[base])) - 1
        return (
            f"best {100 * best:+5.1f} %  median {100 * median:+5.1f} %  "
            f"median of rounds {100 * pairs:+5.1f} %"
        )

    print(f"  recording overhead      {overhead('with recording', 'without recording')}")
    print(f"  checksums' own cost     "
          f"{overhead('with recording', 'recording, no checksums')}")  # fmt: skip
    if args.checkpoints:
        print(f"  checkpoints' own cost   "
              f"{overhead('with recording', 'recording, no checkpoints')}")  # fmt: skip


if __name__ == "__main__":
    main()
