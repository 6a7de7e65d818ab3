"""Cost of ``lca.keras.TrajectoryRecorder`` on ``model.fit``: with the recorder vs without.

    python scripts/bench.py callback                  # MNIST-FC shape: 784-100-50-10, batch 250
    python scripts/bench.py callback --epochs 2 --repeats 5

The data are MNIST-sized random images (55,000 × 784, 10 classes; the step time does not depend
on their content). Each ``fit`` is timed whole, and its loop alone: the whole time less the
recorder's one-off start and end (loading the data through ``data_fn`` and rebuilding the model
for its checks, creating and closing the stores), which is what ``bench.py train`` compares for
``lca train``; and whole less the one call of ``data_fn`` that checks at the start that the data
load (this benchmark's loader generates 235 MB of random numbers, ~0.5 s; a user's loader costs
what it costs, once). A first untimed fit of each kind traces the step. Runs go in pairs, one
with the recorder and one without, alternating which goes first, so that drift of the machine
hits both; the median of the pairs' ratios is the figure least moved by the machine's noise
(on a shared 2-core VM identical fits vary by ±15 %). Target, as for ``lca train``: recording
adds ≤ 20 %.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from .common import interleave, overheads, scratch

LOADING: list[float] = []  # seconds of each call of load(): the user's loader, not the recorder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=4, help="4 epochs = 880 iterations")
    parser.add_argument("--repeats", type=int, default=7, help="pairs of runs")


def load(n: int = 55000):
    """MNIST-sized random data: ((x, y), (x_val, y_val))."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.random((n + 5000, 784), dtype=np.float32)
    y = rng.integers(0, 10, n + 5000).astype(np.int32)
    LOADING.append(time.perf_counter() - start)
    return (x[:n], y[:n]), (x[n:], y[n:])


def build():
    """The MNIST-FC network, 784-100-50-10."""
    import keras

    inputs = keras.Input((784,))
    x = keras.layers.Dense(100, activation="relu")(inputs)
    x = keras.layers.Dense(50, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def timed_recorder(run_dir: Path):
    """The recorder, timing its one-off start and end, and the data_fn call within it."""
    from lca.keras import TrajectoryRecorder

    class TimedRecorder(TrajectoryRecorder):
        one_off = 0.0
        loading = 0.0

        def on_train_begin(self, logs=None):
            before = len(LOADING)
            start = time.perf_counter()
            super().on_train_begin(logs)
            self.one_off += time.perf_counter() - start
            self.loading = sum(LOADING[before:])

        def on_train_end(self, logs=None):
            start = time.perf_counter()
            super().on_train_end(logs)
            self.one_off += time.perf_counter() - start

    return TimedRecorder(run_dir, model_fn=f"{__name__}:build", data_fn=f"{__name__}:load")


def fit(x, y, epochs: int, recorder) -> tuple[float, float, float]:
    """(whole fit, its loop, whole fit less the one call of data_fn) in seconds."""
    import keras

    keras.utils.set_random_seed(0)
    model = build()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    model.fit(x, y, batch_size=250, epochs=epochs, verbose=0, callbacks=[recorder] * bool(recorder))
    seconds = time.perf_counter() - start
    if recorder is None:
        return seconds, seconds, seconds
    return seconds, seconds - recorder.one_off, seconds - recorder.loading


def run(args: argparse.Namespace) -> None:
    (x, y), _ = load()
    with scratch() as tmp:
        fit(x, y, 1, None), fit(x, y, 1, timed_recorder(tmp / "warmup"))  # tracing, caches
        times = interleave(
            {
                True: lambda i: fit(x, y, args.epochs, timed_recorder(tmp / f"run{i}")),
                False: lambda i: fit(x, y, args.epochs, None),
            },
            args.repeats,
        )
    T = args.epochs * (len(y) // 250)
    print(
        f"model.fit of a 784-100-50-10 network: {T} iterations, {args.repeats} pairs of runs"
        " (one with the recorder, one without, alternating which goes first)"
    )
    rows = ((1, "loop"), (0, "whole fit"), (2, "whole fit less data_fn"))
    for part, label in rows:
        plain = [t[part] for t in times[False]]
        recorded = [t[part] for t in times[True]]
        best, median, pairs = overheads(recorded, plain)
        print(
            f"  {label:23s}  plain best {min(plain):5.2f} s (median {statistics.median(plain):5.2f})"
            f"  with the recorder best {min(recorded):5.2f} s (median {statistics.median(recorded):5.2f})"
            f"  overhead best {100 * best:+5.1f} %"
            f" median {100 * median:+5.1f} %"
            f" median of pairs {100 * pairs:+5.1f} %"
        )
    one_off = statistics.median(t[0] - t[1] for t in times[True])
    loading = statistics.median(t[0] - t[2] for t in times[True])
    print(
        f"  recorder start and end (one-off): {one_off:.2f} s, of which {loading:.2f} s is the one"
        " call of data_fn that checks it loads (this benchmark's loader generates the random data)"
    )
