"""Bring your own model: fit it with ``model.fit``, record θ, then allocate from Python.

    python scripts/own_model/run_example.py [--out runs/own_model] [--regression]

Trains ``my_model.build`` (or ``build_regressor`` with mean squared error) with an ordinary
``model.fit`` and ``lca.keras.TrajectoryRecorder``, then calls ``lca.allocate``,
``lca.verify_error`` and ``lca.report.make_report`` on the run directory in the same process
(what ``lca allocate``, ``lca verify-error`` and ``lca report`` do from a shell); exits
non-zero unless the allocation conserves the loss. Takes well under a minute on a CPU.
"""

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import my_model  # noqa: E402

import lca  # noqa: E402
from lca.keras import TrajectoryRecorder  # noqa: E402
from lca.report import make_report  # noqa: E402


def fit(out: Path, regression: bool) -> None:
    keras.utils.set_random_seed(0)
    if regression:
        (x, y), validation = my_model.load_regression()
        model = my_model.build_regressor()
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        names = ("my_model:build_regressor", "my_model:load_regression")
    else:
        (x, y), validation = my_model.load_data()
        model = my_model.build()
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        names = ("my_model:build", "my_model:load_data")
    recorder = TrajectoryRecorder(
        out,
        model_fn=names[0],
        data_fn=names[1],
        allocate={"eval_batch_size": 500, "threshold": 1e-4},
        overwrite=True,
    )
    model.fit(
        x, y, batch_size=50, epochs=2, validation_data=validation, callbacks=[recorder], verbose=0
    )
    print(f"recorded {recorder.steps} optimizer steps in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "own_model")
    parser.add_argument("--regression", action="store_true", help="the MSE regressor")
    args = parser.parse_args()
    out = args.out.resolve()
    fit(out, args.regression)
    lca.allocate(out)  # lca allocate OUT
    errors = lca.verify_error(out)  # lca verify-error OUT
    print(errors.to_text())
    make_report([out], frames=4)  # lca report OUT --frames 4
    print(f"report: {out / 'report' / 'report.md'}")
    sys.exit(0 if errors.passed else 1)  # 1 unless the loss is conserved


if __name__ == "__main__":
    main()
