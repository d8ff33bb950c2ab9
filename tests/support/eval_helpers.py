"""A tiny trained run shared by the evaluation, export and figure tests (the ``tiny_run`` fixture).

Real Imagenette JPEGs from ../shared/data, converted by the real converter (``converted.IMAGENETTE``),
with the converter's statistics; a scaled-down AlexNet is trained on them for a few epochs by the
real pipeline. Adam rather than the paper's SGD: from the paper's N(0, 0.01) initialisation SGD
needs hundreds of steps to leave its initial plateau (every prediction uniform), Adam a few dozen.
"""

from __future__ import annotations

import dataclasses
import pathlib

import keras
import numpy as np

from alexnet_tf import data, imagenet, records
from alexnet_tf.config import Config, get_config
from alexnet_tf.model import build_from_config
from alexnet_tf.statistics import DatasetStatistics, load_statistics
from tests.support.converted import read_records

EPOCHS = 10


@dataclasses.dataclass
class TinyRun:
    data_dir: str
    config: Config
    stats: DatasetStatistics
    model: keras.Model
    wnids: list[str]
    names: list[str]
    val_images: list[bytes]  # the JPEGs the validation shards hold, in their order
    val_labels: np.ndarray


def train_tiny_run(data_dir: pathlib.Path) -> TinyRun:
    """Trains the tiny model on the converted Imagenette images in ``data_dir``."""
    wnids = imagenet.load_synsets(str(data_dir / records.SYNSETS_FILE))
    names = imagenet.class_names(str(data_dir / records.SYNSETS_FILE), str(data_dir / records.METADATA_FILE))
    validation = read_records(data_dir, records.VALIDATION_PREFIX)
    # Deterministic input order and augmentation, so the trained model is the same on every run.
    config = get_config("tiny", batch_size=16, mean_subtraction="image", data_dir=str(data_dir), deterministic=True)
    stats = load_statistics(str(data_dir))
    keras.utils.set_random_seed(0)
    model = build_from_config(config, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    train = data.make_dataset(data.file_pattern(str(data_dir), "train"), True, config, stats=stats, repeat=False)
    model.fit(data.finish_on_host(train, config, stats), epochs=EPOCHS, verbose=0)
    labels = np.array([r.label for r in validation], np.int32)
    return TinyRun(str(data_dir), config, stats, model, wnids, names, [r.encoded for r in validation], labels)
