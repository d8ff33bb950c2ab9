"""One image: recognised by its content, decoded fully, repaired to an RGB JPEG.

RGB JPEGs are kept byte for byte (or, with ``resize``, rescaled so the shorter side is
``resize`` pixels, as in section 2 of the paper, or with ``resize_mode="squash"`` both sides, the
aspect ratio not kept, as Caffe's ImageNet was squashed to 256x256); everything else that decodes (grayscale,
CMYK/YCCK, PNG, GIF, BMP, WebP) is converted to an RGB JPEG and counted by kind. Files that do
not decode raise :class:`RejectedImageError` with the reason. EXIF orientation is ignored, as
TensorFlow's decoders and the paper's pipeline ignore it: pixels are stored in the order the
file holds them.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image

JPEG_QUALITY = 95  # for every image the converter re-encodes (converted kinds, --resize)
STATISTICS_SIZE = 256  # the mean image's side: the paper's central 256x256 crop after shorter-side-to-256
# How each training image is sampled for the statistics (docs/converter.md). The manifest records
# the method, and a resumed or merged conversion refuses shards sampled another way:
#   1: the central square on a 256x256 grid, every sample in every sum.
#   2: a STATISTICS_GRID x STATISTICS_GRID grid; the RGB covariance over every COVARIANCE_STRIDE-th
#      sample of it in each direction; the mean image's samples repeated up to STATISTICS_SIZE.
STATISTICS_METHOD = 2
STATISTICS_GRID = 128
COVARIANCE_STRIDE = 2
# How ``resize`` applies: the paper's shorter side (section 2; the pipeline then takes the central
# square), or Caffe's squash of the whole image to resize x resize. Either way the statistics sample
# the stored image's central square, which for a squashed image is all of it: what the pipeline reads.
RESIZE_MODES = ("crop", "squash")
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}
_MODE_KINDS = {
    "RGB": "",
    "1": "_grayscale",
    "L": "_grayscale",
    "I": "_grayscale",
    "I;16": "_grayscale",
    "I;16B": "_grayscale",
    "LA": "_grayscale_alpha",
    "La": "_grayscale_alpha",
    "RGBA": "_rgba",
    "RGBa": "_rgba",
    "P": "_palette",
    "PA": "_palette",
}


class RejectedImageError(Exception):
    """A file that cannot become a training image; the message is the reason."""


def sniff_format(data: bytes) -> str | None:
    """The image format from the first bytes: "jpeg", "png", "gif", "bmp", "webp" or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _kind(fmt: str, image: Image.Image, data: bytes) -> str:
    if fmt == "png" and len(data) > 24 and data[24] == 16:  # IHDR bit depth
        return "png_16bit"
    if image.mode == "CMYK":
        return f"{fmt}_ycck" if image.info.get("adobe_transform") == 2 else f"{fmt}_cmyk"
    return fmt + _MODE_KINDS.get(image.mode, "_" + image.mode.lower().replace(";", ""))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit samples: keep the top 8 bits (convert("L") would clip everything above 255).
        values = np.asarray(image).astype(np.uint32) >> 8
        return Image.fromarray(np.minimum(values, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info:
        # Transparent pixels hold arbitrary colours; show them as a viewer would, over white.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resize_shorter_side(image: Image.Image, target: int) -> Image.Image:
    width, height = image.size
    if min(width, height) == target:
        return image
    if width <= height:
        size = (target, max(1, round(height * target / width)))
    else:
        size = (max(1, round(width * target / height)), target)
    return image.resize(size, Image.Resampling.BICUBIC)


def _squash(image: Image.Image, target: int) -> Image.Image:
    """Both sides to ``target`` (the aspect ratio not kept), as Caffe's ImageNet images were."""
    if image.size == (target, target):
        return image
    return image.resize((target, target), Image.Resampling.BICUBIC)


def central_square(image: Image.Image, size: int = STATISTICS_GRID) -> np.ndarray:
    """The central square of ``image`` sampled on a ``size`` x ``size`` grid, as uint8 RGB.

    Nearest-neighbour sampling picks pixels without averaging them, so the statistics of the
    samples (mean, covariance) are those of the image's own pixels, not of a smoothed copy.
    """
    width, height = image.size
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2, (width - side) // 2 + side, (height - side) // 2 + side)
    return np.asarray(image.resize((size, size), Image.Resampling.NEAREST, box=box), dtype=np.uint8)


@dataclasses.dataclass
class ConvertedImage:
    """One image ready for a record: RGB JPEG bytes, their size, and what the source was."""

    encoded: bytes
    height: int
    width: int
    kind: str
    kept: bool  # True when ``encoded`` is the source file's own bytes
    pixels: np.ndarray | None = None  # the central square's samples for the statistics, when asked for


def convert_image(
    data: bytes,
    resize: int | None = None,
    jpeg_quality: int = JPEG_QUALITY,
    with_statistics: bool = False,
    resize_mode: str = "crop",
) -> ConvertedImage:
    """Decodes ``data`` fully and returns an RGB JPEG version of it.

    Args:
      data: the file's bytes.
      resize: if set, the shorter side is rescaled to this many pixels (bicubic, antialiased);
        with ``resize_mode="squash"``, both sides.
      jpeg_quality: quality of any JPEG this function encodes.
      with_statistics: also return the stored image's central square sampled on the
        ``STATISTICS_GRID`` grid (for a squashed image, the whole image).
      resize_mode: one of ``RESIZE_MODES``: "crop" keeps the aspect ratio, "squash" does not.

    Raises:
      RejectedImageError: the file is empty, not an image, or does not decode; the message says which.
    """
    if not data:
        raise RejectedImageError("empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise RejectedImageError(f"not a JPEG, PNG, GIF, BMP or WebP image (starts with {data[:8]!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
            if resize and fmt == "jpeg":
                # Let libjpeg scale down by a power of two while decoding (every coefficient is
                # still entropy-decoded, so corrupt data is still caught), leaving at least twice
                # the target size for the bicubic resize (both sides: the longer is longer still).
                width, height = image.size
                side = min(width, height)
                image.draft(image.mode, (width * 2 * resize // side, height * 2 * resize // side))
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, Warning) as e:
        raise RejectedImageError(f"{fmt} does not decode: {e}") from e
    kind = _kind(fmt, image, data)
    try:
        rgb = _to_rgb(image)
    except (OSError, ValueError) as e:
        raise RejectedImageError(f"{kind} cannot be converted to RGB: {e}") from e
    if resize:
        rgb = _squash(rgb, resize) if resize_mode == "squash" else _resize_shorter_side(rgb, resize)
    keep = kind == "jpeg" and rgb.size == image.size and rgb is image
    if keep:
        encoded = data
    else:
        buffer = io.BytesIO()
        rgb.save(buffer, "JPEG", quality=jpeg_quality)
        encoded = buffer.getvalue()
    pixels = central_square(rgb) if with_statistics else None
    return ConvertedImage(encoded, rgb.size[1], rgb.size[0], kind, keep, pixels)
