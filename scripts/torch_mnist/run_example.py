"""A plain PyTorch training loop on MNIST, recorded, then allocated from the command line.

    python scripts/torch_mnist/run_example.py --data PATH/mnist.npz [--out runs/torch_mnist]
    python scripts/torch_mnist/run_example.py --synthetic      # small random data, seconds

Trains ``cnn.build`` (a small CNN, in its own module beside this script) with an ordinary
torch loop (SGD with momentum, shuffled mini-batches, dropout) and
``lca.torch.TrajectoryRecorder``, then runs ``lca allocate``, ``lca verify-error`` and ``lca
report`` on the run directory and prints each one's wall time; exits non-zero unless the
allocation conserves the loss. ``--data`` is a Keras-layout ``mnist.npz`` (``x_train``,
``y_train``): a fixed random ``--train-size`` of its training images is the training set
(the loss LCA allocates), the next ``--val-size`` the validation set. With the defaults
(4,000 and 1,000 images, 200 steps of 50) it takes a few minutes on a 2-core CPU.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cnn  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lca.torch import TrajectoryRecorder  # noqa: E402

# what --synthetic changes (each can still be given)
SYNTHETIC = {"train_size": 300, "val_size": 100, "steps": 20, "batch_size": 30, "lr": 0.1}
REAL = {"train_size": 4000, "val_size": 1000, "steps": 200, "batch_size": 50, "lr": 0.05}


def mnist(path: Path, train_size: int, val_size: int, seed: int):
    """A fixed random subset of MNIST's training images as (N, 1, 28, 28) floats in [0, 1]."""
    with np.load(path) as f:
        x, y = f["x_train"], f["y_train"]
    if train_size + val_size > len(y):
        sys.exit(f"--train-size + --val-size: {path} has {len(y)} training images")
    order = np.random.default_rng(seed).permutation(len(y))[: train_size + val_size]
    x = (x[order].astype(np.float32) / 255.0)[:, None]
    y = y[order].astype(np.int64)
    return (x[:train_size], y[:train_size]), (x[train_size:], y[train_size:])


def synthetic(train_size: int, val_size: int, size: int, seed: int):
    """Ten noisy image templates, MNIST-like in shape: a template per class plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(10, 1, size, size)).astype(np.float32)
    y = rng.integers(0, 10, train_size + val_size)
    x = (templates[y] + rng.normal(size=(len(y), 1, size, size))).astype(np.float32)
    return (x[:train_size], y[:train_size]), (x[train_size:], y[train_size:])


def train(args, train_data, validation_data) -> None:
    """The user's loop: nothing in it is lca's except the recorder's three lines."""
    torch.manual_seed(args.seed)
    model_kwargs = {"size": args.size}
    model = cnn.build(**model_kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    x, y = torch.from_numpy(train_data[0]), torch.from_numpy(train_data[1])
    recorder = TrajectoryRecorder(
        model,
        optimizer,
        args.out,
        iterations=args.steps,
        train_data=train_data,
        validation_data=validation_data,
        model_fn="cnn:build",
        model_kwargs=model_kwargs,
        batch_size=args.batch_size,
        allocate={"eval_batch_size": 1000},
        overwrite=True,
    )
    order = torch.randperm(len(y))
    per_epoch = len(y) // args.batch_size
    model.train()
    with recorder:
        for step in range(args.steps):
            if step and step % per_epoch == 0:
                order = torch.randperm(len(y))
            batch = order[step % per_epoch * args.batch_size :][: args.batch_size]
            recorder.batch(batch)  # which examples this step used (optional)
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()  # θ is recorded after every optimizer step
            optimizer.zero_grad()
    print(
        f"recorded {recorder.steps} optimizer steps in {args.out} ({len(y):,} training and "
        f"{len(validation_data[1]):,} validation examples; final mini-batch loss {loss.item():.4f})",
        flush=True,
    )


def lca(*args: str) -> float:
    """``lca ARGS`` from this checkout, with cnn importable; returns its wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
    print(f"$ lca {' '.join(args)}", flush=True)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lca.cli", *args], env=env)
    if done.returncode:
        sys.exit(done.returncode)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a Keras-layout mnist.npz (x_train, y_train)")
    source.add_argument("--synthetic", action="store_true", help="small random data instead")
    parser.add_argument("--out", default="runs/torch_mnist", help="the run directory")
    parser.add_argument("--train-size", type=int, help=f"[{REAL['train_size']}]")
    parser.add_argument("--val-size", type=int, help=f"[{REAL['val_size']}]")
    parser.add_argument("--steps", type=int, help=f"optimizer steps [{REAL['steps']}]")
    parser.add_argument("--batch-size", type=int, help=f"[{REAL['batch_size']}]")
    parser.add_argument("--lr", type=float, help=f"SGD's, with momentum 0.9 [{REAL['lr']}]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", default="4", help="lca report's animation frames")
    args = parser.parse_args()
    for key, value in (SYNTHETIC if args.synthetic else REAL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)

    args.size = 12 if args.synthetic else 28  # the images' height and width
    began = time.perf_counter()
    if args.synthetic:
        data = synthetic(args.train_size, args.val_size, args.size, args.seed)
    else:
        data = mnist(args.data, args.train_size, args.val_size, args.seed)
    train(args, *data)
    seconds = {"train": time.perf_counter() - began}
    seconds["allocate"] = lca("allocate", args.out)
    # exits 1 (and so do we) unless the loss is conserved
    seconds["verify-error"] = lca("verify-error", args.out)
    seconds["report"] = lca("report", args.out, "--frames", args.frames)
    print("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
