"""converter/image.py: every kind of file recognised by content, repaired or rejected with a reason."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import converter
from alexnet_tf.converter.image import STATISTICS_GRID
from tests.support import converter_helpers as h


def test_convert_image_recognises_every_kind_by_content():
    for name, (make, kind) in h.ODD_FILES.items():
        data = make()
        if kind is None:
            with pytest.raises(converter.RejectedImageError):
                converter.convert_image(data)
            continue
        image = converter.convert_image(data, with_statistics=True)
        assert image.kind == kind, name
        assert image.kept == (kind == "jpeg"), name
        if image.kept:
            assert image.encoded == data
        decoded = tf.io.decode_jpeg(image.encoded).numpy()  # RGB JPEG whatever came in
        assert decoded.shape[2] == 3, name
        assert decoded.shape[:2] == (image.height, image.width), name
        assert image.pixels.shape == (STATISTICS_GRID, STATISTICS_GRID, 3) and image.pixels.dtype == np.uint8


def test_convert_image_rejection_reasons_and_16bit_scaling():
    reasons = {name: "" for name, (_, kind) in h.ODD_FILES.items() if kind is None}
    for name in reasons:
        with pytest.raises(converter.RejectedImageError) as error:
            converter.convert_image(h.ODD_FILES[name][0]())
        reasons[name] = str(error.value)
    assert "empty" in reasons["empty.JPEG"]
    assert "not a JPEG" in reasons["text.JPEG"]
    assert "does not decode" in reasons["truncated.JPEG"]
    assert "does not decode" in reasons["corrupt.JPEG"]
    # 16-bit samples keep their top byte instead of clipping at 255.
    image = converter.convert_image(h.png_16bit())
    decoded = tf.io.decode_jpeg(image.encoded).numpy().astype(int)
    assert abs(decoded[:, :10].mean() - 128) < 3 and abs(decoded[:, -10:].mean() - 255) < 3
    # Transparent pixels come out white, not black.
    transparent = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    decoded = tf.io.decode_jpeg(converter.convert_image(h.encode(transparent, "PNG")).encoded).numpy()
    assert decoded.min() > 250


def test_resize_sets_the_shorter_side_and_keeps_jpegs_already_that_size():
    wide = converter.convert_image(h.jpeg(h.gradient(400, 300)), resize=256)
    assert (wide.height, wide.width) == (256, 341) and not wide.kept
    tall = converter.convert_image(h.encode(h.gradient(60, 90), "PNG"), resize=256)
    assert (tall.height, tall.width) == (384, 256)
    exact = h.jpeg(h.gradient(300, 256))
    assert converter.convert_image(exact, resize=256).encoded == exact
