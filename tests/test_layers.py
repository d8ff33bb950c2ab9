"""LocalResponseNormalization against the paper's formula; TowerConv2D against a grouped conv."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf.layers import LocalResponseNormalization, TowerConv2D

pytestmark = pytest.mark.onednn  # CI runs these again with TF_ENABLE_ONEDNN_OPTS flipped


def lrn_reference(a: np.ndarray, n=5, k=2.0, alpha=1e-4, beta=0.75) -> np.ndarray:
    """Section 3.3 written out: the sum runs over max(0, i - n/2) .. min(N - 1, i + n/2)."""
    a = a.astype(np.float64)
    channels = a.shape[-1]
    out = np.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        sum_sq = np.sum(a[..., lo : hi + 1] ** 2, axis=-1)
        out[..., i] = a[..., i] / (k + alpha * sum_sq) ** beta
    return out


def test_lrn_defaults_are_the_papers():
    layer = LocalResponseNormalization()
    assert (layer.size, layer.k, layer.alpha, layer.beta) == (5, 2.0, 1e-4, 0.75)


def test_lrn_matches_formula_float32_including_edge_channels():
    rng = np.random.default_rng(0)
    # Large activations so the normaliser differs from k^beta and edge channels matter.
    a = rng.uniform(0, 60, size=(2, 4, 3, 16)).astype(np.float32)
    got = LocalResponseNormalization()(a).numpy()
    want = lrn_reference(a)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    for edge in (0, 1, 14, 15):
        np.testing.assert_allclose(got[..., edge], want[..., edge], rtol=2e-6)
    # alpha is not divided by n: the Caffe/torch convention would give a different answer.
    caffe_style = lrn_reference(a, alpha=1e-4 / 5)
    assert np.max(np.abs(got - caffe_style)) > 1e-2


def test_lrn_float16_and_mixed_precision():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 30, size=(1, 3, 3, 12)).astype(np.float16)
    got = LocalResponseNormalization(dtype="float16")(tf.constant(a))
    assert got.dtype == tf.float16
    np.testing.assert_allclose(got.numpy().astype(np.float64), lrn_reference(a), rtol=2e-3)
    # Under the mixed policy float32 inputs are cast to float16 (the layer computes in float32 inside).
    layer = LocalResponseNormalization(dtype="mixed_float16")
    out = layer(tf.constant(a.astype(np.float32)))
    assert out.dtype == tf.float16
    np.testing.assert_allclose(out.numpy().astype(np.float64), lrn_reference(a), rtol=2e-3)


def test_lrn_float16_large_activations_do_not_overflow():
    """Squares of activations above ~115 overflow float16 (max 65504); the layer must not."""
    a = np.random.default_rng(3).uniform(100, 400, size=(1, 2, 2, 8)).astype(np.float16)
    for dtype in ("float16", "mixed_float16"):
        out = LocalResponseNormalization(dtype=dtype)(tf.constant(a))
        assert out.dtype == tf.float16
        assert np.all(np.isfinite(out.numpy()))
        np.testing.assert_allclose(out.numpy().astype(np.float64), lrn_reference(a), rtol=2e-3)


def test_lrn_bfloat16_computes_in_float32():
    a = np.random.default_rng(2).uniform(0, 30, size=(1, 2, 2, 8)).astype(np.float32)
    out = LocalResponseNormalization(dtype="mixed_bfloat16")(tf.constant(a))
    assert out.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), lrn_reference(a), rtol=1e-2)


def test_lrn_gradient_matches_numerical():
    rng = np.random.default_rng(3)
    a = tf.constant(rng.uniform(-20, 20, size=(1, 2, 2, 7)), tf.float64)
    layer = LocalResponseNormalization()

    def f(x):
        # tf's LRN kernel is float32; the float64 input checks the gradient through the cast.
        return layer(tf.cast(x, tf.float32))

    theoretical, numerical = tf.test.compute_gradient(f, [tf.cast(a, tf.float32)], delta=1e-2)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)
    # And the analytic gradient of the formula, computed in float64 by autodiff of the reference.
    x = tf.Variable(a)
    with tf.GradientTape() as tape:
        sq = tf.square(x)
        padded = tf.pad(sq, [[0, 0], [0, 0], [0, 0], [2, 2]])
        sum_sq = tf.add_n([padded[..., j : j + 7] for j in range(5)])
        y = tf.reduce_sum(x / (2.0 + 1e-4 * sum_sq) ** 0.75)
    want = tape.gradient(y, x).numpy()
    xf = tf.cast(a, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(xf)
        yf = tf.reduce_sum(layer(xf))
    np.testing.assert_allclose(tape.gradient(yf, xf).numpy(), want, rtol=1e-4, atol=1e-6)


def test_lrn_rejects_even_size():
    with pytest.raises(ValueError, match="odd"):
        LocalResponseNormalization(size=4)


def test_lrn_serializes():
    layer = LocalResponseNormalization(size=3, k=1.0, alpha=2e-4, beta=0.5, convention="caffe", name="lrn")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, LocalResponseNormalization)
    assert (clone.size, clone.k, clone.alpha, clone.beta, clone.convention, clone.name) == (
        3, 1.0, 2e-4, 0.5, "caffe", "lrn")


def test_lrn_caffe_convention_divides_alpha_by_size():
    """Caffe's LRN (lrn_layer.cpp): x / (k + alpha / n * sum x^2) ^ beta, bvlc_alexnet's k = 1, alpha = 1e-4."""
    a = np.random.default_rng(3).uniform(0, 300, (2, 4, 4, 9)).astype(np.float32)
    got = LocalResponseNormalization(k=1.0, alpha=1e-4, convention="caffe")(a).numpy()
    np.testing.assert_allclose(got, lrn_reference(a, n=5, k=1.0, alpha=1e-4 / 5), rtol=1e-5)
    paper = LocalResponseNormalization(k=1.0, alpha=1e-4)(a).numpy()
    assert np.abs(paper - got).max() > 0.1 * np.abs(got).max()  # the two readings differ at these magnitudes
    with pytest.raises(ValueError, match="convention must be one of"):
        LocalResponseNormalization(convention="torch")


@pytest.mark.parametrize("towers,kernel,stride,padding", [(2, 5, 1, "same"), (2, 3, 1, "same"), (4, 3, 2, "valid")])
def test_towers_equal_grouped_convolution(towers, kernel, stride, padding):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 13, 13, 16)).astype(np.float32)
    tower = TowerConv2D(24, kernel, towers=towers, strides=stride, padding=padding)
    grouped = keras.layers.Conv2D(24, kernel, groups=towers, strides=stride, padding=padding)
    tower.build(x.shape)
    grouped.build(x.shape)
    assert tower.kernel.shape == grouped.kernel.shape == (kernel, kernel, 16 // towers, 24)
    grouped.set_weights(tower.get_weights())
    got, want = tower(x).numpy(), grouped(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Each tower really sees only its own channels: changing tower 0's inputs leaves the other
    # towers' outputs unchanged.
    x2 = x.copy()
    x2[..., : 16 // towers] += 1.0
    delta = np.abs(tower(x2).numpy() - got)
    assert delta[..., : 24 // towers].max() > 1e-3
    assert delta[..., 24 // towers :].max() == 0.0


def test_towers_serialize_and_refuse_groups():
    layer = TowerConv2D(8, 3, towers=2, name="conv")
    config = layer.get_config()
    assert config["towers"] == 2 and "groups" not in config
    assert keras.layers.deserialize(keras.layers.serialize(layer)).towers == 2
    with pytest.raises(ValueError, match="towers"):
        TowerConv2D(8, 3, groups=2)
