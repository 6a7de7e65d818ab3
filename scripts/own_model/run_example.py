"""Bring your own model: fit it with ``model.fit``, record θ, then allocate from the CLI.

    python scripts/own_model/run_example.py [--out runs/own_model] [--regression]

Trains ``my_model.build`` (or ``build_regressor`` with mean squared error) with an ordinary
``model.fit`` and ``lca.keras.TrajectoryRecorder``, then runs ``lca allocate``, ``lca
verify-error`` and ``lca report`` on the run directory; exits non-zero unless the
allocation conserves the loss. Takes well under a minute on a CPU.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import my_model  # noqa: E402

from lca.keras import TrajectoryRecorder  # noqa: E402


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


def lca(*args: str) -> None:
    """``lca ARGS`` from this checkout, with my_model importable (as from its own directory)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    subprocess.run([sys.executable, "-m", "lca.cli", *args], check=True, cwd=HERE, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "own_model")
    parser.add_argument("--regression", action="store_true", help="the MSE regressor")
    args = parser.parse_args()
    out = args.out.resolve()
    fit(out, args.regression)
    lca("allocate", str(out))
    lca("verify-error", str(out))  # exits 1 (and so do we) unless the loss is conserved
    lca("report", str(out), "--frames", "4")


if __name__ == "__main__":
    main()
