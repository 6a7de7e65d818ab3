"""The four networks (exact sizes from the paper), their evaluation variants and θ's layout."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from lca.config import ModelConfig
from lca.layout import ParameterLayout
from lca.layout.describe import describe_layout
from lca.tensorflow.models import build_model
from lca.tensorflow.parameters import parameter_layout

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)
DEFAULTS = {
    "fc": (MNIST, 84_060),
    "lenet": (MNIST, 808_970),
    "resnet20": (CIFAR, 273_066),
    "allcnn": (CIFAR, 1_371_658),
}


def build(name: str, shape=None, num_classes: int = 10, seed: int = 0, evaluation=False, **opts):
    keras.utils.set_random_seed(seed)
    shape = shape or DEFAULTS[name][0]
    return build_model(ModelConfig(name=name, **opts), shape, num_classes, evaluation=evaluation)


def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def has_dropout(model: keras.Model) -> bool:
    return any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)


@pytest.fixture(scope="module")
def default_models() -> dict[str, keras.Model]:
    return {name: build(name) for name in DEFAULTS}


# --- architectures -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_default_models_have_the_papers_parameter_counts(default_models, name):
    model = default_models[name]
    expected = DEFAULTS[name][1]
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == expected
    assert parameter_layout(model).total == expected
    assert model.output_shape == (None, 10)


def test_layer_names_are_explicit(default_models):
    names = {name: [layer.name for layer in m.layers] for name, m in default_models.items()}
    assert [n for n in names["fc"] if n.startswith("dense")] == ["dense_1", "dense_2", "dense_3"]
    assert [n for n in names["lenet"] if n.startswith(("conv", "dense"))] == [
        "conv_1",
        "conv_2",
        "dense_1",
        "dense_2",
    ]
    assert [n for n in names["allcnn"] if n.startswith("conv") and "_" not in n[5:]] == [
        f"conv_{i}" for i in range(1, 10)
    ]
    assert {"stem", "stem_bn", "s1b1_conv1", "s3b3_conv2_bn", "s2b1_shortcut", "dense"} <= set(
        names["resnet20"]
    )
    # nothing left to Keras's auto-naming: a second build gets the very same layer names
    for name in default_models:
        assert [layer.name for layer in build(name).layers] == names[name]


def test_outputs_are_logits_without_softmax(default_models):
    last = {"fc": "dense_3", "lenet": "dense_2", "allcnn": "conv_9", "resnet20": "dense"}
    for name, layer in last.items():
        assert default_models[name].get_layer(layer).activation is keras.activations.linear
    model = default_models["fc"]
    out = model(np.random.default_rng(0).normal(size=(4, *MNIST)).astype("float32")).numpy()
    assert out.shape == (4, 10)
    assert (out < 0).any() and not np.allclose(out.sum(axis=1), 1.0)


def test_batch_norm_follows_its_conv_and_every_conv_has_a_bias(default_models):
    allcnn = default_models["allcnn"]
    with_bn = {f"conv_{i}" for i in (1, 2, 4, 5, 7, 8)}
    layer_names = {layer.name for layer in allcnn.layers}
    for i in range(1, 10):
        conv_layer = allcnn.get_layer(f"conv_{i}")
        assert conv_layer.use_bias and conv_layer.padding == "same"
        assert (f"conv_{i}_bn" in layer_names) == (f"conv_{i}" in with_bn)
    assert allcnn.get_layer("conv_3").strides == (2, 2)
    assert allcnn.get_layer("conv_8").kernel_size == (1, 1)
    resnet = default_models["resnet20"]
    shortcuts = sorted(n.name for n in resnet.layers if n.name.endswith("_shortcut"))
    assert shortcuts == ["s2b1_shortcut", "s3b1_shortcut"]
    for name in shortcuts:
        layer = resnet.get_layer(name)
        assert layer.use_bias and layer.kernel_size == (1, 1) and layer.strides == (2, 2)
        assert f"{name}_bn" not in {n.name for n in resnet.layers}
    assert resnet.get_layer("s2b1_conv1").strides == (2, 2)
    assert resnet.get_layer("s2b2_conv1").strides == (1, 1)


def test_initialisation_is_he_normal_with_zero_biases(default_models):
    model = default_models["lenet"]
    kernel = model.get_layer("dense_1").kernel.numpy()
    fan_in = kernel.shape[0]
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.02)
    assert abs(kernel.mean()) < 1e-3
    for var in model.trainable_variables:
        if var.path.endswith("/bias"):
            assert not var.numpy().any()


def test_small_options_give_the_computed_counts():
    fc = build("fc", (8, 8, 1), hidden_units=[16])
    assert parameter_layout(fc).total == dense(64, 16) + dense(16, 10)

    lenet = build("lenet", (8, 8, 1), 5, conv_filters=[4, 8], dense_units=16)
    assert parameter_layout(lenet).total == (
        conv(5, 1, 4) + conv(5, 4, 8) + dense(2 * 2 * 8, 16) + dense(16, 5)
    )

    resnet = build("resnet20", (8, 8, 3), 5, widths=[4, 8, 16], blocks_per_stage=1)
    bn = 2  # gamma and beta per channel
    expected = (
        conv(3, 3, 4) + bn * 4  # stem
        + 2 * (conv(3, 4, 4) + bn * 4)  # s1b1
        + conv(3, 4, 8) + conv(3, 8, 8) + 2 * bn * 8 + conv(1, 4, 8)  # s2b1 with shortcut
        + conv(3, 8, 16) + conv(3, 16, 16) + 2 * bn * 16 + conv(1, 8, 16)  # s3b1
        + dense(16, 5)
    )  # fmt: skip
    assert parameter_layout(resnet).total == expected == 5165
    assert resnet.output_shape == (None, 5)

    allcnn = build("allcnn", (8, 8, 3), widths=[8, 16])
    expected = (
        conv(3, 3, 8) + conv(3, 8, 8) + 2 * bn * 8 + conv(3, 8, 8)
        + conv(3, 8, 16) + conv(3, 16, 16) + 2 * bn * 16 + conv(3, 16, 16)
        + conv(3, 16, 16) + conv(1, 16, 16) + 2 * bn * 16 + conv(1, 16, 10)
    )  # fmt: skip
    assert parameter_layout(allcnn).total == expected


def test_unknown_model_name_is_rejected():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model(ModelConfig(name="vgg"), MNIST, 10)  # type: ignore[arg-type]


# --- evaluation variant and determinism -----------------------------------------------------


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_evaluation_variant_has_no_dropout_and_the_same_variables(default_models, name):
    train = default_models[name]
    evaluation = build(name, evaluation=True)
    assert not has_dropout(evaluation)
    assert has_dropout(train) == (name in ("lenet", "allcnn"))
    assert [(v.path, tuple(v.shape)) for v in train.trainable_variables] == [
        (v.path, tuple(v.shape)) for v in evaluation.trainable_variables
    ]
    assert parameter_layout(train).to_json() == parameter_layout(evaluation).to_json()
    # the same seed gives the same θ₀ in both variants
    for a, b in zip(train.trainable_variables, evaluation.trainable_variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("name", ["lenet", "resnet20"])
def test_evaluation_loss_is_a_deterministic_function_of_the_weights(name):
    shape = (8, 8, 1) if name == "lenet" else (8, 8, 3)
    opts = (
        {"conv_filters": [4, 8], "dense_units": 16}
        if name == "lenet"
        else {"widths": [4, 8, 16], "blocks_per_stage": 1}
    )
    x = np.random.default_rng(1).normal(size=(16, *shape)).astype("float32")
    evaluation = build(name, shape, evaluation=True, **opts)
    first = evaluation(x, training=True).numpy()
    np.testing.assert_array_equal(first, evaluation(x, training=True).numpy())
    if name == "lenet":  # the training variant's dropout makes two calls differ
        train = build(name, shape, **opts)
        assert not np.array_equal(train(x, training=True).numpy(), train(x, training=True).numpy())
        # and without dropout (training=False) it computes the same function as evaluation
        np.testing.assert_allclose(train(x, training=False).numpy(), first, rtol=1e-5, atol=1e-6)


def test_same_seed_gives_bitwise_identical_weights_and_another_seed_does_not():
    a = build("resnet20", (8, 8, 3), seed=3, widths=[4, 8, 16], blocks_per_stage=1)
    b = build("resnet20", (8, 8, 3), seed=3, widths=[4, 8, 16], blocks_per_stage=1)
    c = build("resnet20", (8, 8, 3), seed=4, widths=[4, 8, 16], blocks_per_stage=1)
    theta = [
        parameter_layout(m).flatten([v.numpy() for v in m.trainable_variables]) for m in (a, b, c)
    ]
    np.testing.assert_array_equal(theta[0], theta[1])
    assert not np.array_equal(theta[0], theta[2])
    # layers of the same shape still draw different weights
    k1 = a.get_layer("s1b1_conv1").kernel.numpy()
    k2 = a.get_layer("s1b1_conv2").kernel.numpy()
    assert not np.array_equal(k1, k2)


# --- parameter layout -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_layout_is_contiguous_and_follows_trainable_variables(default_models, name):
    model = default_models[name]
    layout = parameter_layout(model)
    offset = 0
    for entry, var in zip(layout.entries, model.trainable_variables, strict=True):
        assert entry.name == var.path
        assert entry.shape == tuple(var.shape)
        assert entry.offset == offset and entry.size == int(np.prod(entry.shape))
        offset += entry.size
    assert offset == layout.total
    sizes = layout.layer_sizes()
    assert list(sizes) == layout.layers and sum(sizes.values()) == layout.total
    index = layout.layer_index()
    assert index.dtype == np.int32 and index.shape == (layout.total,)
    np.testing.assert_array_equal(np.bincount(index), list(sizes.values()))
    for i, (layer, slices) in enumerate(layout.layer_slices().items()):
        assert sum(s.stop - s.start for s in slices) == sizes[layer]
        assert all((index[s] == i).all() for s in slices)


def test_layer_groups(default_models):
    fc = parameter_layout(default_models["fc"])
    assert fc.layers == ["dense_1", "dense_2", "dense_3"]
    assert [e.name for e in fc.entries if e.layer == "dense_2"] == [
        "dense_2/kernel",
        "dense_2/bias",
    ]

    allcnn = parameter_layout(default_models["allcnn"])
    assert allcnn.layers == [f"conv_{i}" for i in range(1, 10)]
    assert [e.name for e in allcnn.entries if e.layer == "conv_1"] == [
        "conv_1/kernel",
        "conv_1/bias",
        "conv_1_bn/gamma",
        "conv_1_bn/beta",
    ]
    assert [e.name for e in allcnn.entries if e.layer == "conv_3"] == [
        "conv_3/kernel",
        "conv_3/bias",
    ]

    resnet = parameter_layout(default_models["resnet20"])
    expected = ["stem"]
    for stage in (1, 2, 3):
        for block in (1, 2, 3):
            expected += [f"s{stage}b{block}_conv1", f"s{stage}b{block}_conv2"]
            if stage > 1 and block == 1:
                expected.append(f"s{stage}b{block}_shortcut")
    expected.append("dense")
    assert resnet.layers == expected
    assert {e.name for e in resnet.entries if e.layer == "stem"} == {
        "stem/kernel",
        "stem/bias",
        "stem_bn/gamma",
        "stem_bn/beta",
    }
    assert resnet.layer_sizes()["dense"] == dense(64, 10)
    assert resnet.layer_sizes()["s2b1_shortcut"] == conv(1, 16, 32)

    lenet = parameter_layout(default_models["lenet"])
    assert lenet.layers == ["conv_1", "conv_2", "dense_1", "dense_2"]


def test_flatten_unflatten_round_trip(default_models):
    model = default_models["resnet20"]
    layout = parameter_layout(model)
    arrays = [v.numpy() for v in model.trainable_variables]
    flat = layout.flatten(arrays)
    assert flat.dtype == np.float32 and flat.shape == (layout.total,)
    np.testing.assert_array_equal(flat, np.concatenate([a.ravel() for a in arrays]))
    back = layout.unflatten(flat)
    assert len(back) == len(arrays)
    for a, b in zip(arrays, back, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    # a random θ survives the other direction too, and float64 input is cast to float32
    theta = np.random.default_rng(0).normal(size=layout.total)
    np.testing.assert_array_equal(layout.flatten(layout.unflatten(theta)), theta.astype(np.float32))


def test_flatten_and_unflatten_reject_wrong_shapes(default_models):
    layout = parameter_layout(default_models["fc"])
    arrays = [v.numpy() for v in default_models["fc"].trainable_variables]
    with pytest.raises(ValueError, match="dense_1/kernel"):
        layout.flatten([arrays[0].T, *arrays[1:]])
    with pytest.raises(ValueError, match="expected 6 arrays"):
        layout.flatten(arrays[:-1])
    with pytest.raises(ValueError, match="flat vector"):
        layout.unflatten(np.zeros(layout.total + 1, np.float32))


def test_json_round_trip(default_models):
    layout = parameter_layout(default_models["allcnn"])
    data = layout.to_json()
    text = json.dumps(data)  # JSON-safe: plain ints, strings and lists
    assert data[0] == {
        "name": "conv_1/kernel",
        "shape": [3, 3, 3, 96],
        "offset": 0,
        "size": 2592,
        "layer": "conv_1",
    }
    restored = ParameterLayout.from_json(json.loads(text))
    assert restored == layout
    assert restored.to_json() == data


def test_describe_layout_mentions_every_layer_and_the_total(default_models):
    for name, (_, total) in DEFAULTS.items():
        layout = parameter_layout(default_models[name])
        text = describe_layout(layout)
        rows = text.splitlines()
        for layer in layout.layers:
            assert any(row.split()[0] == layer for row in rows), layer
        assert rows[-1].startswith("total") and f"{total:,}" in rows[-1]
        assert "100.0%" in rows[-1]
    text = describe_layout(parameter_layout(default_models["resnet20"]))
    assert "273,066" in text and "stem_bn/gamma 16" in text and "kernel 3x3x3x16" in text
    dense_row = next(r for r in text.splitlines() if r.startswith("dense "))
    assert "650" in dense_row and f"{100 * 650 / 273_066:.1f}%" in dense_row


# --- the transformer and its units ---------------------------------------------------------

TRANSFORMER = dict(d_model=16, num_heads=4, d_mlp=24, num_layers=2)


def test_transformer_has_the_expected_variables_and_no_train_eval_difference():
    p, d, m = 7, 16, 24
    model = build("transformer", (3,), p, **TRANSFORMER)
    layout = parameter_layout(model)
    vocab = p + 1  # tokens 0..p-1 and "="
    per_block = 4 * d * d + dense(d, m) + dense(m, d)
    assert layout.total == vocab * d + 3 * d + 2 * per_block + dense(d, p)
    assert layout.layers == [
        "embed",
        "pos_embed",
        "block1_attn",
        "block1_mlp",
        "block2_attn",
        "block2_mlp",
        "unembed",
    ]
    x = np.array([[0, 1, p], [6, 5, p], [3, 3, p]], np.int32)
    eval_model = build("transformer", (3,), p, evaluation=True, **TRANSFORMER)
    np.testing.assert_array_equal(model(x), eval_model(x))
    assert model(x).shape == (3, p)
    normed = parameter_layout(build("transformer", (3,), p, layer_norm=True, **TRANSFORMER))
    assert normed.total == layout.total + 2 * 2 * 2 * d + 2 * d  # 2 norms per block + final
    assert normed.unit_labels("block1_ln1")[:2] == ["feature 0", "feature 1"]


def _unit_masks(layout: ParameterLayout, layer: str) -> dict[str, np.ndarray]:
    """Per variable of ``layer``: an array of its shape holding each parameter's unit."""
    flat, unit_of, _ = layout.unit_index()[layer]
    units = np.full(layout.total, -1)
    units[flat] = unit_of
    return {
        e.name: units[e.offset : e.offset + e.size].reshape(e.shape)
        for e in layout.entries
        if e.layer == layer
    }


def test_transformer_units_split_heads_and_neurons_exactly():
    """Each head owns its slice of q, k, v (axis 1) and of the output projection (axis 0);
    each MLP neuron its column in, its bias and its row out; the output bias is shared."""
    d, h, m = 16, 4, 24
    layout = parameter_layout(build("transformer", (3,), 7, **TRANSFORMER))
    index = layout.unit_index()
    for layer, (flat, _, count) in index.items():  # every parameter in exactly one unit
        entries = [e for e in layout.entries if e.layer == layer]
        assert sorted(flat) == sorted(
            i for e in entries for i in range(e.offset, e.offset + e.size)
        )
        assert count == len(layout.unit_labels(layer))
    attn = _unit_masks(layout, "block1_attn")
    assert index["block1_attn"][2] == h and layout.unit_labels("block1_attn")[-1] == "head 3"
    for head in range(h):
        for name in ("query/kernel", "key/kernel", "value/kernel"):
            assert attn[f"block1_attn/{name}"].shape == (d, h, d // h)
            assert (attn[f"block1_attn/{name}"][:, head, :] == head).all()
        assert (attn["block1_attn/attention_output/kernel"][head] == head).all()
    mlp = _unit_masks(layout, "block1_mlp")
    assert index["block1_mlp"][2] == m + 1
    assert layout.unit_labels("block1_mlp")[-2:] == [f"neuron {m - 1}", "shared"]
    for neuron in (0, 5, m - 1):
        assert (mlp["block1_mlp_in/kernel"][:, neuron] == neuron).all()
        assert mlp["block1_mlp_in/bias"][neuron] == neuron
        assert (mlp["block1_mlp_out/kernel"][neuron] == neuron).all()
    assert (mlp["block1_mlp_out/bias"] == m).all()
    embed = _unit_masks(layout, "embed")["embed/embeddings"]
    assert (embed == np.arange(8)[:, None]).all()
    assert layout.unit_labels("pos_embed") == ["position 0", "position 1", "position 2"]
    # units survive the trip through a store's attributes
    assert ParameterLayout.from_json(json.loads(json.dumps(layout.to_json()))) == layout


def test_describe_layout_names_the_units():
    layout = parameter_layout(build("transformer", (3,), 7, **TRANSFORMER))
    rows = {r.split()[0]: r for r in describe_layout(layout).splitlines()}
    assert "4 heads" in rows["block1_attn"]
    assert "24 neurons + shared" in rows["block2_mlp"]
    assert "8 tokens" in rows["embed"] and "3 positions" in rows["pos_embed"]
    assert "7 units" in rows["unembed"]
