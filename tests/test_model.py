"""The paper's network: shapes, parameter count, initialisation, serialisation, portability."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import build_alexnet, get_config
from alexnet_tf import model as model_lib
from alexnet_tf.export import xla_must_compile_functions
from alexnet_tf.layers import LocalResponseNormalization
from alexnet_tf.model import build_from_config

PAPER_SHAPES = {
    "conv1": (55, 55, 96),
    "pool1": (27, 27, 96),
    "conv2": (27, 27, 256),
    "pool2": (13, 13, 256),
    "conv3": (13, 13, 384),
    "conv4": (13, 13, 384),
    "conv5": (13, 13, 256),
    "pool5": (6, 6, 256),
    "fc6": (4096,),
    "fc7": (4096,),
    "fc8": (1000,),
    "prob": (1000,),
}


@pytest.fixture(scope="module")
def paper_model() -> keras.Model:
    return build_alexnet(seed=0)


def test_paper_output_shapes(paper_model):
    assert paper_model.input_shape == (None, 227, 227, 3)
    for name, shape in PAPER_SHAPES.items():
        assert paper_model.get_layer(name).output.shape[1:] == shape, name


def test_paper_parameter_count(paper_model):
    # conv1 11*11*3*96 + 96              =     34,944
    # conv2 2 * (5*5*48*128 + 128)       =    307,456  (two towers, each sees 48 channels)
    # conv3 3*3*256*384 + 384            =    885,120  (sees both towers)
    # conv4 2 * (3*3*192*192 + 192)      =    663,936
    # conv5 2 * (3*3*192*128 + 128)      =    442,624
    # fc6   6*6*256*4096 + 4096          = 37,752,832
    # fc7   4096*4096 + 4096             = 16,781,312
    # fc8   4096*1000 + 1000             =  4,097,000
    # total                              = 60,965,224
    expected = {
        "conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936, "conv5": 442_624,
        "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000,
    }
    for name, count in expected.items():
        assert paper_model.get_layer(name).count_params() == count, name
    assert sum(expected.values()) == 60_965_224
    assert paper_model.count_params() == 60_965_224


def test_single_tower_parameter_count():
    # Full connectivity in conv2, conv4, conv5 adds 307,200 + 663,552 + 442,368 weights.
    assert build_alexnet(towers=1).count_params() == 62_378_344


def test_initialisation_statistics(paper_model):
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        kernel = paper_model.get_layer(name).kernel.numpy()
        assert abs(kernel.mean()) < 1e-3, name
        # fc6 has 37.7M draws, conv1 35k: the std is 0.01 within sampling error.
        assert kernel.std() == pytest.approx(0.01, rel=0.02), name
    for name, bias in [("conv1", 0), ("conv2", 1), ("conv3", 0), ("conv4", 1), ("conv5", 1),
                       ("fc6", 1), ("fc7", 1), ("fc8", 0)]:
        np.testing.assert_array_equal(paper_model.get_layer(name).bias.numpy(), bias, err_msg=name)


def test_caffe_bias_variant():
    model = build_alexnet(num_classes=10, input_size=67, width=0.125, bias_init="caffe")
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        np.testing.assert_allclose(model.get_layer(name).bias.numpy(), 0.1, err_msg=name)
    for name in ("conv1", "conv3", "fc8"):
        np.testing.assert_array_equal(model.get_layer(name).bias.numpy(), 0.0, err_msg=name)


def test_seed_makes_initialisation_reproducible():
    a = build_alexnet(num_classes=10, input_size=67, width=0.125, seed=3)
    b = build_alexnet(num_classes=10, input_size=67, width=0.125, seed=3)
    c = build_alexnet(num_classes=10, input_size=67, width=0.125, seed=4)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.get_layer("conv1").kernel.numpy(), c.get_layer("conv1").kernel.numpy())
    # Layers draw from distinct seeds.
    k4, k5 = a.get_layer("conv4").kernel.numpy(), a.get_layer("conv5").kernel.numpy()
    assert not np.array_equal(k4.ravel()[:50], k5.ravel()[:50])


def test_scaled_variant_from_parameters():
    model = build_from_config(get_config("tiny"))
    assert model.input_shape == (None, 67, 67, 3)
    assert model.get_layer("conv1").output.shape[1:] == (15, 15, 12)
    assert model.get_layer("pool5").output.shape[1:] == (1, 1, 32)
    assert model.output_shape == (None, 10)
    x = np.random.default_rng(0).normal(size=(4, 67, 67, 3)).astype(np.float32)
    probs = model(x, training=False).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_size=60), "too small"),
    (dict(bias_init="zeros"), "bias_init"),
    (dict(width=0), "width"),
    (dict(weight_init="xavier"), "weight_init"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_alexnet(**kwargs)


def test_model_config_round_trip():
    model = build_alexnet(num_classes=7, input_size=67, width=0.25)
    clone = keras.Model.from_config(model.get_config())
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert clone.count_params() == model.count_params()
    assert clone.get_layer("conv2").towers == 2


def test_keras_save_load_round_trip(tmp_path):
    model = build_alexnet(num_classes=7, input_size=67, width=0.25, seed=1)
    path = str(tmp_path / "alexnet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode stays on: no Lambda layers
    x = np.random.default_rng(0).normal(size=(3, 67, 67, 3)).astype(np.float32) * 50
    np.testing.assert_array_equal(model(x, training=False).numpy(), loaded(x, training=False).numpy())



def test_exported_towers_have_no_must_compile_functions(tmp_path):
    model = build_alexnet(num_classes=5, input_size=67, width=0.25, seed=0)
    export_dir = str(tmp_path / "towers")
    model.export(export_dir, verbose=False)
    assert xla_must_compile_functions(export_dir) == []
    # The check can fail: Keras's own grouped convolution exports must-compile functions.
    inputs = keras.Input((13, 13, 8))
    grouped = keras.Model(inputs, keras.layers.Conv2D(8, 3, groups=2)(inputs))
    grouped_dir = str(tmp_path / "grouped")
    grouped.export(grouped_dir, verbose=False)
    assert xla_must_compile_functions(grouped_dir)
    # The exported towers still compute the model's function.
    reloaded = tf.saved_model.load(export_dir)
    x = np.random.default_rng(0).normal(size=(2, 67, 67, 3)).astype(np.float32) * 50
    np.testing.assert_allclose(reloaded.serve(x).numpy(), model(x, training=False).numpy(), atol=1e-6)


# Section 3.5 and Figure 2, in the order the layers are applied. Every layer's input is the
# previous layer's output: LRN follows the ReLU'd conv1 and conv2 and precedes their pooling
# (the paper's order; Caffe's reference model pools first), and nothing else sits between.
PAPER_LAYER_CHAIN = (
    "image", "conv1", "lrn1", "pool1", "conv2", "lrn2", "pool2", "conv3", "conv4", "conv5", "pool5",
    "flatten", "fc6", "dropout6", "fc7", "dropout7", "fc8", "prob",
)


def test_paper_layer_order(paper_model):
    assert [layer.name for layer in paper_model.layers] == list(PAPER_LAYER_CHAIN)
    for previous, name in zip(PAPER_LAYER_CHAIN, PAPER_LAYER_CHAIN[1:]):
        source = paper_model.get_layer(name).input._keras_history.operation
        assert source.name == previous, f"{name} reads {source.name}, the paper has {previous}"


def test_lrn_only_after_conv1_and_conv2_with_the_papers_constants(paper_model):
    lrn = [layer for layer in paper_model.layers if isinstance(layer, LocalResponseNormalization)]
    assert [layer.name for layer in lrn] == ["lrn1", "lrn2"]
    for layer in lrn:
        assert (layer.size, layer.k, layer.alpha, layer.beta) == (5, 2.0, 1e-4, 0.75), layer.name


def test_pooling_is_overlapping_3x3_stride_2(paper_model):
    """Section 3.4: z = 3, s = 2. A 2x2/2 pooling gives the same shapes, so shapes cannot tell."""
    pools = [layer for layer in paper_model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert [layer.name for layer in pools] == ["pool1", "pool2", "pool5"]
    for layer in pools:
        assert tuple(layer.pool_size) == (3, 3) and tuple(layer.strides) == (2, 2), layer.name
        assert layer.padding == "valid", layer.name
    # And the windows really overlap: a single hot pixel at (2, 2) reaches both pool1 outputs
    # (0, 0) and (1, 1) (windows 0-2 and 2-4), which non-overlapping pooling cannot do.
    hot = np.zeros((1, 5, 5, 1), np.float32)
    hot[0, 2, 2, 0] = 1.0
    pooled = paper_model.get_layer("pool1")(hot).numpy()[0, ..., 0]
    np.testing.assert_array_equal(pooled, [[1.0, 1.0], [1.0, 1.0]])


def test_relu_after_every_hidden_layer_and_softmax_at_the_end(paper_model):
    """Section 3.1: ReLU on the output of every convolutional and fully-connected layer but fc8."""
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        assert paper_model.get_layer(name).activation is keras.activations.relu, name
    assert paper_model.get_layer("fc8").activation is keras.activations.linear
    assert paper_model.get_layer("prob").activation is keras.activations.softmax


def test_dropout_half_after_fc6_and_fc7_only(paper_model):
    """Section 4.2: dropout 0.5 in the first two fully-connected layers, nowhere else."""
    dropouts = [layer for layer in paper_model.layers if isinstance(layer, keras.layers.Dropout)]
    assert [layer.name for layer in dropouts] == ["dropout6", "dropout7"]
    assert [layer.rate for layer in dropouts] == [0.5, 0.5]
    assert [layer.input._keras_history.operation.name for layer in dropouts] == ["fc6", "fc7"]
    # Training mode really drops about half of fc6's and fc7's units (scaled by 2), inference none.
    x = np.full((64, 4096), 3.0, np.float32)
    for layer in dropouts:
        dropped = layer(x, training=True).numpy()
        assert set(np.unique(dropped)) == {0.0, 6.0}, layer.name
        assert abs((dropped == 0).mean() - 0.5) < 0.01, layer.name
        np.testing.assert_array_equal(layer(x, training=False).numpy(), x)


# The paper's ablations (sections 3.2-3.4, 4.1-4.2): each switch off builds the network the
# paper compared against, and nothing else changes.


def _chain(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers]


def _output_shapes(model: keras.Model) -> dict[str, tuple]:
    return {name: tuple(model.get_layer(name).output.shape[1:]) for name in PAPER_SHAPES}


def test_lrn_off_leaves_out_lrn1_and_lrn2_only():
    model = build_alexnet(lrn=False, seed=0)
    assert not [layer for layer in model.layers if isinstance(layer, LocalResponseNormalization)]
    assert _chain(model) == [name for name in PAPER_LAYER_CHAIN if name not in ("lrn1", "lrn2")]
    # The pooling reads the ReLU'd convolution directly.
    for pool, conv in (("pool1", "conv1"), ("pool2", "conv2")):
        assert model.get_layer(pool).input._keras_history.operation.name == conv
    assert _output_shapes(model) == PAPER_SHAPES
    assert model.count_params() == 60_965_224  # LRN has no parameters


def test_non_overlapping_pooling_is_2x2_stride_2_with_the_papers_sizes():
    """Section 3.4's comparison: s = z = 2 "produces output of equivalent dimensions"."""
    model = build_alexnet(overlapping_pooling=False, seed=0)
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert [layer.name for layer in pools] == ["pool1", "pool2", "pool5"]
    for layer in pools:
        assert tuple(layer.pool_size) == (2, 2) and tuple(layer.strides) == (2, 2), layer.name
        assert layer.padding == "valid", layer.name
    # 55 -> 27 -> 13 -> 6, as with 3x3/2: (55 - 2) // 2 + 1 = 27, (27 - 2) // 2 + 1 = 13, ...
    assert _output_shapes(model) == PAPER_SHAPES
    assert _chain(model) == list(PAPER_LAYER_CHAIN)
    assert model.count_params() == 60_965_224
    # The windows are disjoint: a hot pixel reaches exactly one output of pool1.
    hot = np.zeros((1, 4, 4, 1), np.float32)
    hot[0, 1, 1, 0] = 1.0
    np.testing.assert_array_equal(model.get_layer("pool1")(hot).numpy()[0, ..., 0], [[1.0, 0.0], [0.0, 0.0]])
    # The Imagenette preset's input (99: conv1 23 -> 11 -> 5 -> 2) keeps its sizes too.
    imagenette = get_config("imagenette")
    assert model_lib.feature_map_sizes(imagenette.input_size, overlapping_pooling=False) == \
        model_lib.feature_map_sizes(imagenette.input_size) == {"conv1": 23, "pool1": 11, "pool2": 5, "pool5": 2}


def test_one_tower_is_fully_connected_at_the_same_width():
    """``towers=1``: conv2, conv4, conv5 see every channel of their input, with the paper's widths."""
    model = build_alexnet(towers=1, seed=0)
    paper = build_alexnet(seed=0)
    assert _output_shapes(model) == PAPER_SHAPES
    assert _chain(model) == list(PAPER_LAYER_CHAIN)
    kernels = {"conv2": (5, 5, 96, 256), "conv4": (3, 3, 384, 384), "conv5": (3, 3, 384, 256)}
    for name, shape in kernels.items():
        assert model.get_layer(name).towers == 1, name
        assert tuple(model.get_layer(name).kernel.shape) == shape, name
        # The two-tower kernel reads half the input channels.
        assert tuple(paper.get_layer(name).kernel.shape) == shape[:2] + (shape[2] // 2, shape[3]), name
    # Functionally: with one tower, conv2's first output channel responds to the second half
    # of its input channels; with two towers it cannot.
    small = {"num_classes": 10, "input_size": 67, "width": 0.25, "seed": 1, "bias_init": "caffe"}
    for towers, responds in ((1, True), (2, False)):
        conv2 = build_alexnet(towers=towers, **small).get_layer("conv2")
        x = np.random.default_rng(0).uniform(size=(1, 7, 7, 24)).astype(np.float32)
        bumped = x.copy()
        bumped[..., 12:] += 1.0
        changed = not np.allclose(conv2(x).numpy()[..., :16], conv2(bumped).numpy()[..., :16])
        assert changed == responds, towers


def test_one_tower_at_half_the_kernels_is_the_papers_one_gpu_net():
    """Section 3.2: the two-GPU net against one GPU with half the kernels in each conv layer."""
    model = build_alexnet(towers=1, conv_width=0.5, seed=0)
    channels = {"conv1": 48, "conv2": 128, "conv3": 192, "conv4": 192, "conv5": 128}
    for name, count in channels.items():
        assert model.get_layer(name).output.shape[-1] == count, name
        assert model.get_layer(name).towers == 1, name
    # The fully connected layers keep the paper's width.
    assert model.get_layer("fc6").output.shape[-1] == 4096
    assert model.get_layer("fc7").output.shape[-1] == 4096
    assert model.get_layer("pool5").output.shape[1:] == (6, 6, 128)
    # conv1 11*11*3*48 + 48       =     17,472
    # conv2 5*5*48*128 + 128      =    153,728
    # conv3 3*3*128*192 + 192     =    221,376
    # conv4 3*3*192*192 + 192     =    331,968
    # conv5 3*3*192*128 + 128     =    221,312
    # fc6   6*6*128*4096 + 4096   = 18,878,464
    # fc7   4096*4096 + 4096      = 16,781,312
    # fc8   4096*1000 + 1000      =  4,097,000
    # total                       = 40,702,632
    assert model.count_params() == 40_702_632


def test_dropout_zero_passes_fc6_and_fc7_through():
    model = build_alexnet(num_classes=10, input_size=67, width=0.125, dropout=0.0, seed=0)
    assert _chain(model) == list(PAPER_LAYER_CHAIN)
    x = np.random.default_rng(0).uniform(1, 2, size=(8, 512)).astype(np.float32)
    for name in ("dropout6", "dropout7"):
        layer = model.get_layer(name)
        assert layer.rate == 0.0
        np.testing.assert_array_equal(layer(x, training=True).numpy(), x)


def test_ablation_switches_reach_the_model_from_the_config():
    tiny = get_config("tiny")
    assert (tiny.lrn, tiny.overlapping_pooling, tiny.conv_width, tiny.towers) == (True, True, 1.0, 2)
    assert not [n for n in _chain(build_from_config(tiny.replace(lrn=False))) if n.startswith("lrn")]
    assert build_from_config(tiny.replace(overlapping_pooling=False)).get_layer("pool1").pool_size == (2, 2)
    assert build_from_config(tiny).get_layer("conv1").output.shape[-1] == 12
    half = build_from_config(tiny.replace(towers=1, conv_width=0.5))
    assert half.get_layer("conv1").output.shape[-1] == 6
    assert half.get_layer("conv4").towers == 1
    assert half.get_layer("fc6").output.shape[-1] == 512  # the fc layers keep the width
    assert build_from_config(tiny.replace(dropout=0.0)).get_layer("dropout6").rate == 0.0


def test_lrn_constants_reach_the_model_from_the_config():
    caffe_lrn = get_config("tiny", lrn_k=1.0, lrn_alpha=1e-4, lrn_alpha_convention="caffe")
    for name in ("lrn1", "lrn2"):
        layer = build_from_config(caffe_lrn).get_layer(name)
        assert (layer.size, layer.k, layer.alpha, layer.beta, layer.convention) == (5, 1.0, 1e-4, 0.75, "caffe")
    assert build_from_config(get_config("tiny")).get_layer("lrn1").convention == "paper"


def test_batch_norm_sits_between_each_convolution_and_its_relu():
    """--batch_norm (not the paper's; off in the paper preset, on in imagenette's): conv without bias, BN, ReLU."""
    tiny = get_config("tiny")
    assert not get_config("paper").batch_norm and not tiny.batch_norm and get_config("imagenette").batch_norm
    plain, normalised = build_from_config(tiny, seed=0), build_from_config(tiny.replace(batch_norm=True), seed=0)
    chain = _chain(normalised)
    convolutions = ("conv1", "conv2", "conv3", "conv4", "conv5")
    for name in convolutions:
        conv = normalised.get_layer(name)
        assert conv.bias is None and conv.activation.__name__ == "linear", name
        assert chain[chain.index(name) + 1: chain.index(name) + 3] == [f"{name}_bn", f"{name}_relu"], name
    assert [n for n in chain if not n.endswith(("_bn", "_relu"))] == _chain(plain)
    # The conv biases go; each BN layer adds a scale, an offset and two moving statistics.
    channels = sum(plain.get_layer(name).output.shape[-1] for name in convolutions)
    assert normalised.count_params() == plain.count_params() - channels + 4 * channels
    # Training mode: each channel of conv1's normalised output has mean 0 and variance 1 over the batch.
    images = np.random.default_rng(0).normal(0, 50, (8, 67, 67, 3)).astype(np.float32)
    probe = keras.Model(normalised.input, normalised.get_layer("conv1_bn").output)
    out = probe(images, training=True).numpy()
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.var(axis=(0, 1, 2)), 1.0, atol=0.02)
