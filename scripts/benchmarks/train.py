"""Cost of recording θ every iteration: `lca train` with recording vs without, side by side.

    python scripts/bench.py train                                   # MNIST-FC (Keras loader)
    python scripts/bench.py train --set data.path=../shared/data/mnist.npz
    python scripts/bench.py train configs/tiny_fc.yaml --repeats 5

Runs go in rounds, one with recording (resume checkpoints and crc32c checksums included, as
`lca train` does), one without, one recording without checksums (their cost),
and with ``--checkpoints`` one recording without checkpoints, the order rotating
each round so that drift of the machine hits all; the median of the rounds' ratios is the
figure least moved by the machine's noise. The loop time excludes start-up (data loading,
model building, tracing). Target: recording adds ≤ 20 %.

Every run is :func:`lca.training.train` itself; what a mode leaves out is taken away around
it, here: without recording, the compiled step returns no θ and the trajectory's store is
created but never written to; without checkpoints, the writer gets no training state to save.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Iterator
from unittest import mock

from .common import interleave, overheads, scratch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="configs/mnist_fc_sgd.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override, key=value"
    )
    parser.add_argument("--repeats", type=int, default=7, help="rounds of runs")
    parser.add_argument(
        "--checkpoints",
        action="store_true",
        help="also record without resume checkpoints, to measure what they cost",
    )


def unrecorded_trainer(config, dataset):
    """The framework's trainer with θ kept inside the step: it returns the loss, the
    accuracy and a zero where the finiteness probe of θ goes."""
    if config.framework == "torch":
        from lca.torch.training import TorchTrainer

        class UnrecordedTorch(TorchTrainer):
            def _theta_outputs(self) -> list:
                return [0.0]

        return UnrecordedTorch(config, dataset)
    from lca.tensorflow.training import Trainer

    class Unrecorded(Trainer):
        def _make_step(self):
            import tensorflow as tf

            step = super()._make_step()

            def loss_and_accuracy(idx, t):
                return [*step(idx, t)[:2], tf.constant(0.0)]

            return loss_and_accuracy

    return Unrecorded(config, dataset)


def writer_class(*, writes: bool = True, checkpoints: bool = True):
    """`lca train`'s trajectory writer, optionally writing nothing or saving no checkpoints."""
    from lca.storage import TrajectoryWriter

    class Writer(TrajectoryWriter):
        def __init__(self, *args, snapshot=None, **kwargs) -> None:
            super().__init__(*args, snapshot=snapshot if checkpoints else None, **kwargs)

        if not writes:

            def append(self, theta, metrics) -> None:
                pass

            def close(self, status: str = "complete", attrs=None) -> int:
                self._pool.shutdown()
                return 0

    return Writer


@contextlib.contextmanager
def without_recording() -> Iterator[None]:
    import lca.training.loop as loop

    with (
        mock.patch.object(loop, "make_trainer", unrecorded_trainer),
        mock.patch.object(loop, "TrajectoryWriter", writer_class(writes=False)),
    ):
        yield


@contextlib.contextmanager
def without_checkpoints() -> Iterator[None]:
    import lca.training.loop as loop

    with mock.patch.object(loop, "TrajectoryWriter", writer_class(checkpoints=False)):
        yield


def no_checksums():
    from lca.storage import without_checksums

    return without_checksums()


def run(args: argparse.Namespace) -> None:
    from lca.config import load_config
    from lca.training import train

    config = load_config(args.config, args.overrides)
    modes = {
        "without recording": without_recording,
        "with recording": contextlib.nullcontext,
        "recording, no checksums": no_checksums,
    }
    if args.checkpoints:
        modes["recording, no checkpoints"] = without_checkpoints

    def training(mode: str):
        def seconds(i: int) -> float:
            with modes[mode]():
                return train(config, tmp / f"run{i}", progress=False, overwrite=True).seconds

        return seconds

    with scratch() as tmp:
        with without_recording():  # data into the OS cache
            train(config, tmp / "warmup", progress=False)
        times = interleave({mode: training(mode) for mode in modes}, args.repeats)
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
        best, median, rounds = overheads(times[mode], times[base])
        return (
            f"best {100 * best:+5.1f} %  median {100 * median:+5.1f} %  "
            f"median of rounds {100 * rounds:+5.1f} %"
        )

    print(f"  recording overhead      {overhead('with recording', 'without recording')}")
    print(f"  checksums' own cost     {overhead('with recording', 'recording, no checksums')}")
    if args.checkpoints:
        print(
            f"  checkpoints' own cost   {overhead('with recording', 'recording, no checkpoints')}"
        )
