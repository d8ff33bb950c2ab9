"""A tiny trained run shared by the evaluation, export and figure tests (built once per process).

Real Imagenette JPEGs from ../shared/data are written as TFRecord shards with the project's
schema (a stand-in for the converter), with a mean image computed from the training shards; a
scaled-down AlexNet is trained on them for a few epochs by the real pipeline. Adam rather than
the paper's SGD: from the paper's N(0, 0.01) initialisation SGD needs hundreds of steps to leave
its initial plateau (every prediction uniform), Adam a few dozen.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import pathlib
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import data, imagenet, preprocess, records
from alexnet_tf.config import Config, get_config
from alexnet_tf.model import build_from_config
from alexnet_tf.statistics import DatasetStatistics, imagenet_statistics, load_statistics

ROOT = pathlib.Path(__file__).resolve().parent.parent
TRAIN_PER_CLASS = 16
VAL_PER_CLASS = 6
TRAIN_SHARDS = 2
VAL_SHARDS = 2
EPOCHS = 10


@dataclasses.dataclass
class TinyRun:
    data_dir: str
    config: Config
    stats: DatasetStatistics
    model: keras.Model
    wnids: list[str]
    names: list[str]
    val_files: list[pathlib.Path]  # in shard order
    val_labels: np.ndarray


def write_shards(shared_data: pathlib.Path, data_dir: str, image_size: int) -> tuple[list, list, list]:
    """Imagenette JPEGs -> train/validation shards and statistics.json with a mean image."""
    wnids = imagenet.load_synsets(str(shared_data / "metadata" / "imagenette_synsets.txt"))
    metadata = imagenet.load_metadata()
    names = [metadata[w] for w in wnids]
    val_files, val_labels = [], []
    for split, prefix, per_class, num_shards in (
        ("train", records.TRAIN_PREFIX, TRAIN_PER_CLASS, TRAIN_SHARDS),
        ("val", records.VALIDATION_PREFIX, VAL_PER_CLASS, VAL_SHARDS),
    ):
        items = []
        for label, wnid in enumerate(wnids):
            files = sorted((shared_data / "imagenette" / split / wnid).glob("*.JPEG"))[:per_class]
            items += [(f, label) for f in files]
        for shard in range(num_shards):
            path = f"{data_dir}/{records.shard_name(prefix, shard, num_shards)}"
            with tf.io.TFRecordWriter(path) as writer:
                for f, label in items[shard::num_shards]:
                    encoded = f.read_bytes()
                    height, width, _ = tf.image.extract_jpeg_shape(encoded).numpy()
                    writer.write(records.serialize_example(
                        encoded, int(height), int(width), label, wnids[label], names[label], f.name))
                    if split == "val":
                        val_files.append(f)
                        val_labels.append(label)
        if split == "train":
            mean = np.mean([preprocess.center_square(preprocess.decode_rgb(f.read_bytes()), image_size).numpy()
                            for f, _ in items], axis=0)
    stats = imagenet_statistics()
    stats.mean_image = mean.astype(np.float32)
    stats.num_images = TRAIN_PER_CLASS * len(wnids)
    stats.save(data_dir)
    return wnids, names, (val_files, np.array(val_labels, np.int32))


@functools.cache
def tiny_run(shared_data: pathlib.Path) -> TinyRun:
    data_dir = tempfile.mkdtemp(prefix="alexnet_eval_test_")
    atexit.register(shutil.rmtree, data_dir, True)
    # Deterministic input order and augmentation, so the trained model is the same on every run.
    config = get_config("tiny", batch_size=16, mean_subtraction="image", data_dir=data_dir, deterministic=True)
    wnids, names, (val_files, val_labels) = write_shards(shared_data, data_dir, config.image_size)
    stats = load_statistics(data_dir)
    keras.utils.set_random_seed(0)
    model = build_from_config(config, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    train = data.make_dataset(data.file_pattern(data_dir, "train"), True, config, stats=stats, repeat=False)
    model.fit(train, epochs=EPOCHS, verbose=0)
    return TinyRun(data_dir, config, stats, model, wnids, names, val_files, val_labels)


@functools.cache
def exported_model(shared_data: pathlib.Path) -> str:
    """The tiny run exported by ``export.export_saved_model`` (once per process)."""
    from alexnet_tf import export

    run = tiny_run(shared_data)
    export_dir = tempfile.mkdtemp(prefix="alexnet_export_test_")
    atexit.register(shutil.rmtree, export_dir, True)
    return export.export_saved_model(
        run.model, f"{export_dir}/1", run.config, run.stats, run.wnids, run.names
    )
