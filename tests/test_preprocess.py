"""Tests of alexnet_tf.preprocess: each op eagerly and inside Dataset.map, with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import device_preprocess, preprocess, views
from alexnet_tf.config import get_config
from alexnet_tf.statistics import DatasetStatistics, imagenet_statistics

GRAYSCALE_JPEG = "imagenet-sample/train/n02096051/n02096051_Airedale.JPEG"
TINY_JPEG = "imagenet-sample/train/n01871265/n01871265_tusker.JPEG"  # 75x56
RGB_JPEG = "imagenet-sample/train/n01440764/n01440764_tench.JPEG"


def _in_map(fn, *args):
    """``fn(*args)`` computed inside Dataset.map (graph mode), as numpy."""
    dataset = tf.data.Dataset.from_tensors(tuple(tf.convert_to_tensor(a) for a in args)).map(fn)
    return next(iter(dataset)).numpy()


def _both(fn, *args):
    """``fn(*args)`` eagerly and inside Dataset.map; asserts they agree and returns the eager one."""
    eager = fn(*args)
    mapped = _in_map(fn, *args)
    np.testing.assert_allclose(eager.numpy(), mapped, rtol=0, atol=1e-4)
    assert mapped.shape == tuple(eager.shape)
    return eager.numpy()


def _coordinates(height: int, width: int) -> np.ndarray:
    """float32 [h, w, 3] whose pixel (y, x) holds (y, x, 7)."""
    y, x = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([y, x, np.full_like(y, 7)], axis=-1).astype(np.float32)


def _random_uint8(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def _jpeg(image: np.ndarray, quality: int = 100) -> tf.Tensor:
    return tf.io.encode_jpeg(image, quality=quality, chroma_downsampling=False)


def _smooth_uint8(height: int, width: int) -> np.ndarray:
    """A smooth image: JPEG keeps it nearly exactly, so crops can be compared."""
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    return np.stack([200 * y + 20, 200 * x + 20, 100 * (x + y) + 20], -1).astype(np.uint8)


@pytest.fixture
def tiny():
    # image_size 76, input_size 67; per-channel means so outputs can be checked exactly.
    return get_config("tiny", mean_subtraction="channel")


@pytest.fixture
def stats():
    return imagenet_statistics()


def test_decode_rgb_formats_eagerly_and_in_map():
    rgb = _random_uint8(5, 9)
    gray = _random_uint8(7, 3, channels=1)
    rgba = _random_uint8(4, 6, channels=4)
    png = _both(preprocess.decode_rgb, tf.io.encode_png(rgb))
    np.testing.assert_array_equal(png, rgb)
    png_gray = _both(preprocess.decode_rgb, tf.io.encode_png(gray))
    np.testing.assert_array_equal(png_gray, np.repeat(gray, 3, axis=-1))
    np.testing.assert_array_equal(_both(preprocess.decode_rgb, tf.io.encode_png(rgba)), rgba[..., :3])
    jpeg = _both(preprocess.decode_rgb, _jpeg(_smooth_uint8(13, 17)))
    assert jpeg.dtype == np.uint8 and jpeg.shape == (13, 17, 3)
    assert np.abs(jpeg.astype(int) - _smooth_uint8(13, 17)).mean() < 4  # lossy, but the same picture


def test_decode_rgb_real_grayscale_jpeg(shared_data):
    image = preprocess.decode_rgb(tf.io.read_file(str(shared_data / GRAYSCALE_JPEG))).numpy()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


@pytest.mark.parametrize("height,width", [(76, 76), (37, 91), (91, 37), (1, 1), (2, 300), (300, 77)])
def test_center_square_shapes(height, width):
    square = _both(lambda im: preprocess.center_square(im, 76), _random_uint8(height, width))
    assert square.shape == (76, 76, 3) and square.dtype == np.float32
    assert square.min() >= 0 and square.max() <= 255


def test_center_square_known_answers():
    image = _random_uint8(76, 150)
    # Shorter side already the target: exactly the central square, no resampling.
    np.testing.assert_array_equal(preprocess.center_square(image, 76).numpy(), image[:, 37:113])
    # A constant image stays constant whatever the resize does.
    flat = np.full((30, 47, 3), 99, np.uint8)
    np.testing.assert_allclose(preprocess.center_square(flat, 76).numpy(), 99.0, atol=1e-3)
    # Antialiased: halving a one-pixel checkerboard gives its average grey, not aliased stripes.
    checker = (np.indices((152, 152)).sum(0) % 2 * 254).astype(np.uint8)[..., None].repeat(3, -1)
    np.testing.assert_allclose(preprocess.center_square(checker, 76).numpy()[1:-1, 1:-1], 127.0, atol=1e-3)


def test_center_square_close_to_resize_then_crop():
    """Cutting the square first approximates the paper's resize-then-cut on a smooth image."""
    image = _smooth_uint8(300, 420)
    ours = preprocess.center_square(image, 256).numpy()
    resized = tf.image.resize(image, [256, 358], antialias=True).numpy()
    paper = resized[:, 51:307]
    assert np.abs(ours - paper).mean() < 1.0


def test_ten_crop_exact_positions():
    height, width, crop = 9, 12, 4
    image = _coordinates(height, width)
    crops = _both(lambda im: preprocess.ten_crop(im, crop), image)
    assert crops.shape == (10, crop, crop, 3)
    mirror = image[:, ::-1]
    top_lefts = [(0, 0), (0, 8), (5, 0), (5, 8), (2, 4)]
    for i, (y, x) in enumerate(top_lefts):
        np.testing.assert_array_equal(crops[i], image[y : y + crop, x : x + crop])
        np.testing.assert_array_equal(crops[5 + i], mirror[y : y + crop, x : x + crop])
    # Named pixels: the top-right crop starts at column 8; the mirror's top-left is the original's
    # top-right crop, reflected.
    assert tuple(crops[1, 0, 0, :2]) == (0, 8)
    assert tuple(crops[5, 0, 0, :2]) == (0, 11)
    np.testing.assert_array_equal(crops[5], crops[1][:, ::-1])
    assert tuple(crops[4, 0, 0, :2]) == (2, 4)


def test_ten_crop_mirror_patches_are_reflections_with_odd_margin():
    """Patches 5-9 are the reflections of patches 0-4 (paper section 4.1), also when w - crop is
    odd, as for 256 -> 227: the mirror's centre patch is the centre patch reflected."""
    height, width, crop = 10, 13, 4  # margins 6 and 9: the centre column offset is 4.5
    image = _coordinates(height, width)
    crops = _both(lambda im: preprocess.ten_crop(im, crop), image)
    np.testing.assert_array_equal(crops[4], image[3:7, 4:8])
    np.testing.assert_array_equal(crops[9], crops[4][:, ::-1])
    for original, mirrored in ((1, 5), (0, 6), (3, 7), (2, 8)):
        np.testing.assert_array_equal(crops[mirrored], crops[original][:, ::-1])


def test_random_crop_always_inside_image():
    image = _coordinates(11, 14)
    seen = set()
    for i in range(200):
        crop = preprocess.random_crop(image, 5, tf.constant([3, i])).numpy()
        y0, x0 = int(crop[0, 0, 0]), int(crop[0, 0, 1])
        seen.add((y0, x0))
        assert 0 <= y0 <= 6 and 0 <= x0 <= 9
        np.testing.assert_array_equal(crop, image[y0 : y0 + 5, x0 : x0 + 5])
    # All offsets reachable, including the last one.
    ys, xs = {y for y, _ in seen}, {x for _, x in seen}
    assert ys == set(range(7)) and xs == set(range(10))
    in_map = _in_map(lambda im, s: preprocess.random_crop(im, 5, s), image, tf.constant([3, 0]))
    np.testing.assert_array_equal(in_map, preprocess.random_crop(image, 5, tf.constant([3, 0])).numpy())


def test_random_flip_known_answer_and_probability():
    image = _coordinates(3, 4)
    draws = 400
    mapped = next(
        iter(
            tf.data.Dataset.range(draws)
            .map(lambda i: preprocess.random_flip(image, tf.stack([i, 5])))
            .batch(draws)
        )
    ).numpy()
    flipped = 0
    for i, out in enumerate(mapped):
        if np.array_equal(out, image[:, ::-1]):
            flipped += 1
            assert tuple(out[0, 0, :2]) == (0, 3)
        else:
            np.testing.assert_array_equal(out, image)
        if i < 20:
            eager = preprocess.random_flip(image, tf.constant([i, 5], tf.int64)).numpy()
            np.testing.assert_array_equal(eager, out)
    assert 160 <= flipped <= 240  # p = 0.5: 200 +- 4 standard deviations


def _pca_offsets(stats, draws: int, seed: int, block: bool = False) -> np.ndarray:
    """``draws`` colour offsets: one per image seed ``(i, seed)`` inside ``Dataset.map``, or one block."""
    if block:  # as the input pipeline draws them: many at once from one seed
        offsets = preprocess.pca_offset(stats.eigenvalues, stats.eigenvectors, 0.1, tf.constant([seed, 1]), draws)
        return offsets.numpy().astype(np.float64)
    dataset = (
        tf.data.Dataset.range(draws)
        .map(lambda i: preprocess.pca_offset(stats.eigenvalues, stats.eigenvectors, 0.1, tf.stack([i, seed])))
        .batch(draws)
    )
    return next(iter(dataset)).numpy().astype(np.float64)


@pytest.mark.parametrize("block", [False, True], ids=["per_image", "block"])
def test_pca_offset_zero_mean_and_expected_covariance(stats, block):
    """Over many draws the noise has mean 0 and covariance V diag((0.1 lambda)^2) V^T."""
    draws = 20_000
    offsets = _pca_offsets(stats, draws, seed=17, block=block)
    vectors, values = stats.eigenvectors.astype(np.float64), stats.eigenvalues.astype(np.float64)
    expected = vectors @ np.diag((0.1 * values) ** 2) @ vectors.T
    spread = np.sqrt(np.diag(expected))
    np.testing.assert_array_less(np.abs(offsets.mean(0)), 5 * spread / np.sqrt(draws))
    np.testing.assert_allclose(np.cov(offsets.T), expected, atol=0.05 * expected.max())
    # And the same function eagerly, one image at a time: the block's first row is its draw.
    seed = [17, 1] if block else [3, 17]
    eager = preprocess.pca_offset(values, vectors, 0.1, tf.constant(seed, tf.int64)).numpy()
    np.testing.assert_allclose(eager, offsets[0 if block else 3], rtol=1e-5)


@pytest.mark.parametrize("block", [False, True], ids=["per_image", "block"])
def test_pca_noise_variance_per_eigen_direction(stats, block):
    """Each principal component gets its own alpha_i ~ N(0, 0.1) times its own eigenvalue.

    The offset's coordinate along p_i is alpha_i * lambda_i: its standard deviation must be
    0.1 * lambda_i for every i separately. The ImageNet eigenvalues differ by 4-12x, so a missing
    component (variance 0) or two swapped (wrong eigenvalue) is off by far more than the 5%
    tolerance (20,000 draws: the sampling error of a variance is 1%).
    """
    draws = 20_000
    offsets = _pca_offsets(stats, draws, seed=23, block=block)
    vectors, values = stats.eigenvectors.astype(np.float64), stats.eigenvalues.astype(np.float64)
    coordinates = offsets @ vectors  # column i: the offset's component along p_i
    for i in range(3):
        assert coordinates[:, i].std() == pytest.approx(0.1 * values[i], rel=0.05), f"component {i}"
    # Independent draws per component: the coordinates are uncorrelated.
    correlation = np.corrcoef(coordinates.T)
    np.testing.assert_allclose(correlation[~np.eye(3, dtype=bool)], 0.0, atol=0.05)
    # Known answer for single draws: V (alpha * lambda) with alpha from the same stateless draw.
    for seed in ([0, 1], [5, 9], [123, 4]):
        alpha = 0.1 * tf.random.stateless_normal([3], seed=seed).numpy().astype(np.float64)
        got = preprocess.pca_offset(values, vectors, 0.1, tf.constant(seed)).numpy()
        np.testing.assert_allclose(got, vectors @ (alpha * values), rtol=1e-5, atol=1e-5)


def test_training_draws_in_blocks(stats):
    """The input pipeline's draws, a block at a time: uniform crops over every position, fair flips,
    the first row what one image draws from the same seed, and no colour noise at pca_std=0."""
    config = get_config("paper")
    count, limit = 20_000, config.image_size - config.input_size + 1
    sizes = dict(image_size=config.image_size, input_size=config.input_size)
    seed = tf.constant([7, 2], tf.int64)
    draws = preprocess.training_draws(seed, count, **sizes, stats=stats, pca_std=config.pca_std)
    crops, flips = draws.crop.numpy(), draws.flip.numpy()
    assert crops.shape == (count, 2) and draws.rgb.shape == (count, 3)
    for axis in range(2):  # each of the 30 positions about count / 30 times (+- 5 sigma)
        histogram = np.bincount(crops[:, axis], minlength=limit)
        assert len(histogram) == limit and np.abs(histogram - count / limit).max() < 5 * np.sqrt(count / limit)
    assert abs(flips.mean() - 0.5) < 5 * 0.5 / np.sqrt(count)
    assert np.corrcoef(crops[:, 0], crops[:, 1])[0, 1] < 0.05  # y and x drawn independently
    one = preprocess.train_crop(tf.io.encode_png(_random_uint8(300, 260)), **sizes, stats=stats, pca_std=config.pca_std,
                                seed=tf.constant([7, 2], tf.int64))
    assert isinstance(one, views.TrainCrop)
    for field in ("crop", "flip", "rgb"):
        np.testing.assert_array_equal(getattr(one, field).numpy(), getattr(draws, field)[0].numpy())
    quiet = preprocess.training_draws(tf.constant([7, 2], tf.int64), 8, **sizes, stats=stats, pca_std=0.0)
    np.testing.assert_array_equal(quiet.rgb.numpy(), np.zeros((8, 3)))
    np.testing.assert_array_equal(quiet.crop.numpy(), crops[:8])


def _rounded_square(encoded, image_size: int) -> np.ndarray:
    """The central square as the host sends it: the float resize rounded to whole grey levels."""
    return np.round(preprocess.center_square(preprocess.decode_rgb(encoded), image_size).numpy())


def _mean_subtracted_square(encoded, config, stats):
    """The central square minus the per-channel mean: every training view is a crop of it."""
    return _rounded_square(encoded, config.image_size) - stats.mean_rgb


def _matches_some_crop(out: np.ndarray, square: np.ndarray, atol: float) -> bool:
    size = out.shape[0]
    for view in (out, out[:, ::-1]):
        for y in range(square.shape[0] - size + 1):
            for x in range(square.shape[1] - size + 1):
                if np.abs(square[y : y + size, x : x + size] - view).max() <= atol:
                    return True
    return False


@pytest.mark.parametrize(
    "encode",
    [
        lambda: _jpeg(_smooth_uint8(76, 101)),  # fused decode-and-crop
        lambda: _jpeg(_smooth_uint8(200, 130)),  # decode square, resize
        lambda: tf.io.encode_png(_random_uint8(90, 77)),  # not JPEG
        lambda: tf.io.encode_png(_random_uint8(5, 3, channels=1)),  # tiny grayscale
    ],
)
def test_train_view_is_a_crop_of_the_central_square(encode, tiny, stats):
    config = tiny.replace(pca_std=0.0)
    encoded = encode()
    square = _mean_subtracted_square(encoded, config, stats)
    for i in range(4):
        out = _both(
            lambda e, s: device_preprocess.preprocess_for_train(e, config, stats, s), encoded, tf.constant([i, 1])
        )
        assert out.shape == (67, 67, 3) and out.dtype == np.float32
        assert _matches_some_crop(out, square, atol=1e-3)


def test_train_view_with_mean_image_is_a_crop_of_the_mean_subtracted_square(tiny):
    """Flips must mirror the mean image too: the output is a (mirrored) crop of square - mean."""
    stats = imagenet_statistics()
    stats.mean_image = np.random.default_rng(2).uniform(0, 255, (76, 76, 3)).astype(np.float32)
    config = tiny.replace(pca_std=0.0, mean_subtraction="image")
    for encoded in (_jpeg(_smooth_uint8(76, 101)), tf.io.encode_png(_random_uint8(90, 77))):
        square = _rounded_square(encoded, 76) - stats.mean_image
        for i in range(6):
            out = _both(
                lambda e, s: device_preprocess.preprocess_for_train(e, config, stats, s),
                encoded,
                tf.constant([i, 9]),
            )
            assert _matches_some_crop(out, square, atol=1e-3)


def test_train_view_deterministic_per_seed_with_colour_noise(tiny, stats):
    encoded = tf.io.encode_png(_random_uint8(80, 95))
    first = device_preprocess.preprocess_for_train(encoded, tiny, stats, tf.constant([4, 2])).numpy()
    again = device_preprocess.preprocess_for_train(encoded, tiny, stats, tf.constant([4, 2])).numpy()
    np.testing.assert_array_equal(first, again)
    without = device_preprocess.preprocess_for_train(
        encoded, tiny.replace(pca_std=0.0), stats, tf.constant([4, 2])
    ).numpy()
    shift = (first - without).reshape(-1, 3)
    # The colour noise is one RGB offset for the whole image.
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-3)
    assert np.abs(shift[0]).max() > 0
    others = {device_preprocess.preprocess_for_train(encoded, tiny, stats).numpy().tobytes() for _ in range(3)}
    assert len(others) == 3  # seed=None draws fresh randomness


def test_real_jpegs_all_views(shared_data, tiny, stats):
    config = get_config("paper")
    for name in (GRAYSCALE_JPEG, TINY_JPEG, RGB_JPEG):
        encoded = tf.io.read_file(str(shared_data / name))
        train = _both(
            lambda e, s: device_preprocess.preprocess_for_train(e, config, stats, s), encoded, tf.constant([1, 2])
        )
        assert train.shape == (227, 227, 3)
        evaluated = _both(lambda e: device_preprocess.preprocess_for_eval(e, config, stats), encoded)
        assert evaluated.shape == (227, 227, 3)
        crops = _both(lambda e: device_preprocess.preprocess_for_ten_crop(e, config, stats), encoded)
        assert crops.shape == (10, 227, 227, 3) and crops.dtype == np.float32
        # The centre patch of the ten is the centre-crop view.
        np.testing.assert_allclose(crops[4], evaluated, atol=1e-3)


def test_eval_view_known_answer_with_mean_image(tiny):
    image = _random_uint8(100, 130)
    encoded = tf.io.encode_png(image)
    mean_image = np.random.default_rng(1).uniform(0, 255, (76, 76, 3)).astype(np.float32)
    stats = imagenet_statistics()
    stats.mean_image = mean_image
    config = tiny.replace(mean_subtraction="image")
    square = np.round(preprocess.center_square(image, 76).numpy())
    offset = (76 - 67) // 2
    expected = (square - mean_image)[offset : offset + 67, offset : offset + 67]
    np.testing.assert_allclose(
        _both(lambda e: device_preprocess.preprocess_for_eval(e, config, stats), encoded), expected, atol=1e-3
    )
    crops = device_preprocess.preprocess_for_ten_crop(encoded, config, stats).numpy()
    np.testing.assert_allclose(crops, preprocess.ten_crop(square - mean_image, 67).numpy(), atol=1e-3)


def test_device_finish_known_answer_in_batches_and_one_function_per_view(tiny):
    """The device's half: each view is mirror(crop - mean window at its offset) + rgb, batched or not."""
    stats = imagenet_statistics()
    stats.mean_image = np.random.default_rng(3).uniform(0, 255, (76, 76, 3)).astype(np.float32)
    config = tiny.replace(mean_subtraction="image")
    images = [_random_uint8(90, 77), _smooth_uint8(76, 101), _random_uint8(80, 80)] * 3
    features = [preprocess.train_crop(tf.io.encode_png(image), config.image_size, config.input_size, stats,
                                      config.pca_std, tf.constant([i, 3]))
                for i, image in enumerate(images)]
    batch = tf.nest.map_structure(lambda *fields: tf.stack(fields), *features)
    assert isinstance(batch, views.TrainCrop) and batch.image.dtype == tf.uint8
    finish = device_preprocess.DeviceFinish(config, stats)
    finished = tf.function(finish)(batch).numpy()
    assert finished.shape == (9, 67, 67, 3) and finished.dtype == np.float32
    flips = batch.flip.numpy()
    assert 0 < flips.sum() < len(flips)
    for i, f in enumerate(features):
        y, x = f.crop.numpy()
        expected = f.image.numpy() - stats.mean_image[y : y + 67, x : x + 67]
        expected = (expected[:, ::-1] if flips[i] else expected) + f.rgb.numpy()
        np.testing.assert_allclose(finished[i], expected, atol=1e-3)
        np.testing.assert_allclose(finish(f).numpy(), expected, atol=1e-3)
    # Per-channel means: the same crops minus one RGB mean.
    channel = device_preprocess.DeviceFinish(config.replace(mean_subtraction="channel"), stats)(batch).numpy()
    pixels = batch.image.numpy().astype(np.float32)
    pixels = np.where(flips[:, None, None, None], pixels[:, :, ::-1], pixels)
    np.testing.assert_allclose(channel, pixels - stats.mean_rgb + batch.rgb.numpy()[:, None, None],
                               atol=1e-3)
    # The same crops as evaluation crops: the mean window subtracted, neither mirrored nor coloured.
    centre = finish(views.EvalCrop(batch.image, batch.crop)).numpy()
    for i, f in enumerate(features):
        y, x = f.crop.numpy()
        np.testing.assert_allclose(centre[i], f.image.numpy() - stats.mean_image[y : y + 67, x : x + 67], atol=1e-3)
    # Float images (arrays, synthetic inputs) are finished already.
    floats = tf.zeros([2, 67, 67, 3])
    assert finish(views.FloatImages(floats)) is floats
    assert device_preprocess.DeviceFinish(config, None)(views.FloatImages(floats)) is floats
    # The views are chosen by type: a dict with the same fields, or a bare tensor, is refused.
    for other in (batch._asdict(), floats):
        with pytest.raises(TypeError, match="views.FloatImages"):
            finish(other)
    with pytest.raises(ValueError, match="stats="):
        device_preprocess.DeviceFinish(config, None)(batch)


def test_mean_image_of_another_size_is_resized(tiny):
    stats = DatasetStatistics(
        mean_rgb=np.zeros(3, np.float32),
        std_rgb=np.ones(3, np.float32),
        eigenvalues=np.ones(3, np.float32),
        eigenvectors=np.eye(3, dtype=np.float32),
        mean_image=np.full((256, 256, 3), [10.0, 20.0, 30.0], np.float32),
    )
    mean = preprocess.mean_to_subtract(tiny.replace(mean_subtraction="image"), stats)
    assert mean.shape == (76, 76, 3)
    np.testing.assert_allclose(mean[5, 7], [10.0, 20.0, 30.0], atol=1e-3)
    # "channel", or no mean image, gives the per-channel mean.
    stats.mean_image = None
    assert preprocess.mean_to_subtract(tiny.replace(mean_subtraction="image"), stats).shape == (3,)


def test_eval_view_in_tf_function_with_map_fn(tiny, stats):
    """As the exporter serves it: a batch of encoded images of different sizes and formats."""
    images = [_random_uint8(90, 77), _smooth_uint8(76, 120), _random_uint8(6, 4, channels=1)]
    encoded = tf.stack([tf.io.encode_png(images[0]), _jpeg(images[1]), tf.io.encode_png(images[2])])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(batch):
        return tf.map_fn(
            lambda e: device_preprocess.preprocess_for_eval(e, tiny, stats),
            batch,
            fn_output_signature=tf.TensorSpec([67, 67, 3], tf.float32),
        )

    out = serve(encoded).numpy()
    assert out.shape == (3, 67, 67, 3)
    for i in range(3):
        np.testing.assert_allclose(
            out[i], device_preprocess.preprocess_for_eval(encoded[i], tiny, stats).numpy(), atol=1e-4
        )


def test_bad_config_names_the_flag(stats):
    with pytest.raises(ValueError, match="input_size"):
        device_preprocess.preprocess_for_eval(
            tf.io.encode_png(_random_uint8(8, 8)), get_config("tiny", input_size=80), stats
        )
    with pytest.raises(ValueError, match="mean_subtraction"):
        preprocess.mean_to_subtract(get_config("tiny", mean_subtraction="pixel"), stats)
