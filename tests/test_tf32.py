"""``allocate.precision: tf32``, the one way to use TF32: off everywhere, allowed only in the
gradient passes, the losses from a float32 pass. A CPU has no TF32, so here tf32 must give
float32's numbers, and the switches must be set around the right passes and restored."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from lca.allocation import load_objective
from lca.storage import LCA_STORE, open_trajectory

TORCH_FC = ("framework=torch", "training.iterations=16", "allocate.block_iterations=4")


def test_tensorflow_tf32_is_on_only_in_the_gradient_passes(trained_runs):
    import tensorflow as tf

    def enabled() -> bool:
        return bool(tf.config.experimental.tensor_float_32_execution_enabled())

    run_dir = trained_runs("tiny_fc")
    theta = open_trajectory(run_dir).theta
    objective = load_objective(run_dir, ["train"], precision="tf32")
    assert not enabled()  # configured off
    seen = []
    for name in ("_compiled", "_compiled_losses", "_compiled_between"):
        compiled = getattr(objective, name)

        def watched(*args, _name=name, _compiled=compiled):
            seen.append((_name, enabled()))
            return _compiled(*args)

        setattr(objective, name, watched)
    objective(theta[0])
    objective(theta[1])
    objective.between(theta[0], theta[1], 0.5)  # the first dense layer's shortcut
    assert seen == [
        ("_compiled", True),
        ("_compiled_losses", False),
        ("_compiled", True),
        ("_compiled_losses", False),
        ("_compiled_between", True),
    ]
    assert not enabled()
    assert objective.with_precision("float32").precision == "float32"


@pytest.fixture(scope="module")
def torch_runs(allocated_runs):
    """The torch twin of tiny_fc allocated in float32 and in tf32."""
    pytest.importorskip("torch")
    return {
        precision: allocated_runs("tiny_fc", TORCH_FC, precision=precision)
        for precision in ("float32", "tf32")
    }


def test_a_torch_run_allocated_in_tf32_has_float32_losses(torch_runs):
    stores = {p: zarr.open_group(run / LCA_STORE, mode="r") for p, run in torch_runs.items()}
    assert stores["tf32"].attrs["precision"] == "tf32"
    assert stores["tf32"]["done"][:].all()
    for split in ("train", "val"):
        losses = {p: store[split]["loss"][:] for p, store in stores.items()}
        assert np.isfinite(losses["tf32"]).all()
        assert np.array_equal(losses["tf32"], losses["float32"]), split  # bitwise


def test_torch_tf32_is_allowed_only_in_the_gradient_pass(torch_runs):
    import torch

    from lca.torch.runtime import configure_torch

    def flags() -> tuple[bool, bool]:
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    run_dir = torch_runs["float32"]
    theta = open_trajectory(run_dir).theta
    exact = load_objective(run_dir, ["train", "val"])
    assert flags() == (False, False)  # configured off
    tf32 = exact.with_precision("tf32")
    assert (exact.precision, tf32.precision) == ("float32", "tf32")
    with pytest.raises(ValueError, match="bfloat16 is TensorFlow only"):
        exact.with_precision("bfloat16")
    seen = []
    forward = tf32._forward

    def watched(*args):
        seen.append(flags())
        return forward(*args)

    tf32._forward = watched
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
        got = tf32(theta[3])
        assert flags() == (True, False)  # restored as they were
    finally:
        configure_torch()
    half = len(seen) // 2  # the gradient pass's batches, then the float32 pass's
    assert seen == [(True, True)] * half + [(False, False)] * half
    want = exact(theta[3])
    for split, (loss, grad) in got.items():  # a CPU has no TF32: float32's numbers
        assert loss == want[split].loss and np.array_equal(grad, want[split].gradient)
    assert tf32.with_precision("float32").precision == "float32"  # the fall-back
