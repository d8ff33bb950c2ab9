"""Images and folders the converter's tests share: every kind of odd file, the real sample."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import tensorflow as tf
from PIL import Image

from alexnet_tf import converter

SAMPLE_CLASSES = 40  # of the 1000 real sample images, enough to mix classes, fast enough for CI


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def cmyk_jpeg(adobe_transform: int = 0) -> bytes:
    data = jpeg(gradient().convert("CMYK"))
    if adobe_transform:
        # Pillow writes an Adobe APP14 marker with transform 0 (CMYK); 2 declares YCCK.
        transform = data.index(b"Adobe") + 11  # after "Adobe", version, flags0 and flags1
        data = data[:transform] + bytes([adobe_transform]) + data[transform + 1 :]
    return data


def png_16bit() -> bytes:
    pixels = np.full((32, 40), 0x8000, np.uint16)
    pixels[:, 20:] = 0xFF00
    return encode(Image.fromarray(pixels), "PNG")


ODD_FILES = {
    # name: (bytes factory, expected kind or None for a reject)
    "rgb.JPEG": (lambda: jpeg(gradient()), "jpeg"),
    "gray.jpg": (lambda: jpeg(gradient().convert("L")), "jpeg_grayscale"),
    "cmyk.JPEG": (lambda: cmyk_jpeg(), "jpeg_cmyk"),
    "ycck.JPEG": (lambda: cmyk_jpeg(2), "jpeg_ycck"),
    "png_inside.JPEG": (lambda: encode(gradient(), "PNG"), "png"),
    "rgba.png": (lambda: encode(gradient().convert("RGBA"), "PNG"), "png_rgba"),
    "palette.PNG": (lambda: encode(gradient().convert("P"), "PNG"), "png_palette"),
    "deep.png": (png_16bit, "png_16bit"),
    "gif_inside.JPEG": (lambda: encode(gradient().convert("P"), "GIF"), "gif_palette"),
    "bmp_inside.jpeg": (lambda: encode(gradient(), "BMP"), "bmp"),
    "webp_inside.JPEG": (lambda: encode(gradient(), "WEBP"), "webp"),
    "truncated.JPEG": (lambda: jpeg(gradient(200, 150))[:1500], None),
    "empty.JPEG": (lambda: b"", None),
    "text.JPEG": (lambda: b"this is not an image at all\n", None),
    "corrupt.JPEG": (lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, None),
}


def sample_subset(shared_data: pathlib.Path, tmp_path: pathlib.Path, classes: int = SAMPLE_CLASSES):
    """A training folder of the first ``classes`` real sample classes (symlinks, not copies)."""
    train = tmp_path / "train"
    for wnid_dir in sorted((shared_data / "imagenet-sample" / "train").iterdir())[:classes]:
        (train / wnid_dir.name).mkdir(parents=True)
        for image in wnid_dir.iterdir():
            (train / wnid_dir.name / image.name).symlink_to(image)
    return train


def shards(directory: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if "-of-" in p.name}


def examples(directory: pathlib.Path, prefix: str) -> list[tf.train.Example]:
    return list(converter.iterate_records(str(p) for p in sorted(directory.glob(f"{prefix}-*"))))


def feature(example: tf.train.Example, key: str):
    feature = example.features.feature[key]
    return (feature.bytes_list.value or feature.int64_list.value)[0]


def convert_sample(shared_data, train, out, num_workers):
    """The sample subset and the flat validation images, converted with the test's shard counts."""
    return converter.convert(
        train_directory=str(train),
        validation_directory=str(shared_data / "imagenet-sample" / "val"),
        validation_labels_file=str(shared_data / "metadata" / "imagenet_2012_validation_synset_labels.txt"),
        output_directory=str(out),
        train_shards=4,
        validation_shards=2,
        num_workers=num_workers,
    )


def odd_dataset(root: pathlib.Path) -> pathlib.Path:
    train = root / "train"
    wnid = "n01440764"
    (train / wnid).mkdir(parents=True)
    (train / "n01443537").mkdir()
    for name, (make, _) in ODD_FILES.items():
        (train / wnid / name).write_bytes(make())
    # Awkward names: spaces, quotes, non-ASCII.
    for name in ("with space.JPEG", 'potter\'s "wheel".jpg', "café_日本.JPEG"):
        (train / "n01443537" / name).write_bytes(jpeg(gradient()))
    (train / "n01443537" / "notes.txt").write_text("not listed")
    return train
