"""Tests of alexnet_tf.data: ordering, sharding, determinism, labels and corrupt shards."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import data, device_preprocess, records, sources, views
from alexnet_tf.config import get_config
from alexnet_tf.statistics import imagenet_statistics, load_statistics
from tests.support import run_python
from tests.support.converted import ASSORTED, IMAGENETTE, StoredRecord, copy_shards, read_records

NUM_IMAGES = len(ASSORTED.train_labels)  # labels 0..23, one per image


@pytest.fixture(scope="module")
def shards(converted) -> pathlib.Path:
    """The assorted drawn images (odd sizes, grayscale, tiny) as the converter wrote them."""
    return converted(ASSORTED)


@pytest.fixture(scope="module")
def stored(shards) -> list[StoredRecord]:
    """The training records in the order the shards hold them."""
    return read_records(shards, "train")


@pytest.fixture
def config():
    return get_config("tiny", num_classes=1000, batch_size=4, mean_subtraction="channel", shuffle_buffer=64)


def _labels(dataset) -> list[int]:
    return [int(v) for _, labels in dataset for v in labels.numpy()]


def _arrays(features) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in features._asdict().items()}


def test_file_pattern(shards, tmp_path):
    shards = copy_shards(shards, tmp_path / "records")
    pattern = data.file_pattern(str(shards), "train")
    assert sorted(tf.io.gfile.glob(pattern)) == sorted(tf.io.gfile.glob(os.path.join(str(shards), "train-*-of-*")))
    # A converter's half-written temporary file beside the shards is not read.
    temporary = tf.io.gfile.glob(pattern)[0] + ".tmp-123"
    with open(temporary, "wb") as f:
        f.write(b"partial")
    try:
        assert temporary not in tf.io.gfile.glob(pattern)
    finally:
        os.remove(temporary)
    assert len(tf.io.gfile.glob(data.file_pattern(str(shards), "validation"))) == 2
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        data.file_pattern(str(empty), "train")
    with pytest.raises(ValueError, match="split"):
        data.file_pattern(str(shards), "test")
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        data.make_dataset(str(empty / "train-*"), True, get_config("tiny"))


def test_eval_reads_every_record_once_in_order(shards, config, stored):
    stats = imagenet_statistics()
    dataset = data.make_dataset(data.file_pattern(str(shards), "train"), False, config, stats=stats)
    features = next(iter(dataset))[0]
    # The host sends the uint8 centre crops; the mean is the device's.
    assert isinstance(features, views.EvalCrop)
    assert features.image.dtype == tf.uint8 and features.image.shape == (4, 67, 67, 3)
    batches = list(data.finish_on_host(dataset, config, stats))
    assert [b[0].shape[0] for b in batches] == [4] * 6
    # Every label once (one image per class), in the order the shards hold the records.
    assert sorted(r.label for r in stored) == list(range(NUM_IMAGES))
    assert _labels(batches) == [r.label for r in stored]
    images, labels = batches[0]
    assert images.dtype == tf.float32 and images.shape[1:] == (67, 67, 3) and labels.dtype == tf.int32
    np.testing.assert_allclose(
        images[1].numpy(), device_preprocess.preprocess_for_eval(stored[1].encoded, config, stats).numpy(), atol=1e-4
    )
    # A short last batch is kept.
    validation = list(
        data.make_dataset(data.file_pattern(str(shards), "validation"), False, config, stats=stats)
    )
    assert [b[1].shape[0] for b in validation] == [4, 4, 2]


def test_eval_ten_crop(shards, config):
    stats = imagenet_statistics()
    dataset = data.make_dataset(
        data.file_pattern(str(shards), "validation"), False, config, stats=stats, ten_crop=True
    )
    # The host sends each image's uint8 square once; the device cuts the ten patches.
    square = next(iter(dataset))[0]
    assert isinstance(square, views.TenCropSquare) and square.square.shape == (4, 76, 76, 3)
    images, labels = next(iter(data.finish_on_host(dataset, config, stats)))
    assert images.shape == (4, 10, 67, 67, 3) and labels.shape == (4,)
    # The first four records of validation shard 0: each row is the ten patches of that image.
    first = read_records(shards, "validation")[:4]
    assert labels.numpy().tolist() == [r.label for r in first]
    for row, record in enumerate(first):
        np.testing.assert_allclose(
            images[row].numpy(), device_preprocess.preprocess_for_ten_crop(record.encoded, config, stats).numpy(),
            atol=1e-4,
        )
    # Patches 5-9 are patches 0-4 mirrored, the centre one included.
    for original, mirrored in ((4, 9), (1, 5), (0, 6)):
        np.testing.assert_allclose(images[0, mirrored].numpy(), images[0, original].numpy()[:, ::-1], atol=1e-4)
    with pytest.raises(ValueError, match="ten_crop"):
        data.make_dataset(data.file_pattern(str(shards), "validation"), True, config, ten_crop=True)


def test_train_batches_shuffled_and_dropping_remainder(shards, config):
    pattern = data.file_pattern(str(shards), "train")
    dataset = data.make_dataset(pattern, True, config.replace(batch_size=5), repeat=False)
    batches = list(dataset)
    assert len(batches) == 4  # 24 records, batches of 5, the short one dropped
    for features, labels in batches:
        assert isinstance(features, views.TrainCrop)
        images = features.image
        assert images.shape == (5, 67, 67, 3) and images.dtype == tf.uint8 and labels.dtype == tf.int32
        assert features.crop.shape == (5, 2) and features.flip.dtype == tf.bool
        assert np.all((features.crop.numpy() >= 0) & (features.crop.numpy() <= 76 - 67))
        assert features.rgb.shape == (5, 3) and features.rgb.dtype == tf.float32
    labels = _labels(batches)
    assert len(set(labels)) == 20 and set(labels) <= set(range(NUM_IMAGES))
    # Repeating (the training default) goes past one epoch.
    assert len(list(data.make_dataset(pattern, True, config).take(15))) == 15


def test_deterministic_mode_repeats_exactly(shards, config):
    pattern = data.file_pattern(str(shards), "train")
    deterministic = config.replace(deterministic=True, seed=3)

    def run(cfg):
        return [(_arrays(x), y.numpy()) for x, y in data.make_dataset(pattern, True, cfg).take(8)]

    first, second = run(deterministic), run(deterministic)
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(y1, y2)
        for key in x1:
            np.testing.assert_array_equal(x1[key], x2[key])
    other = run(deterministic.replace(seed=4))
    assert any(not np.array_equal(a[0]["image"], b[0]["image"]) for a, b in zip(first, other, strict=True))
    # Two epochs are not copies of each other (fresh file order, shuffle and augmentation).
    labels = np.concatenate([y for _, y in first])
    assert not np.array_equal(labels[:24], labels[24:48])


@pytest.mark.parametrize("num_shards", [6, 2])  # sharding by file, and by record
@pytest.mark.parametrize("training", [True, False])
def test_worker_sharding_covers_every_record_once(converted, config, num_shards, training):
    pattern = data.file_pattern(str(converted(ASSORTED.replace(train_shards=num_shards))), "train")
    workers = 3
    seen = []
    for worker in range(workers):
        context = tf.distribute.InputContext(
            num_input_pipelines=workers, input_pipeline_id=worker, num_replicas_in_sync=workers
        )
        # A global batch of 3 is one image per replica, so drop_remainder drops nothing.
        dataset = data.make_dataset(pattern, training, config.replace(batch_size=3), context, repeat=False)
        labels = _labels(dataset)
        assert all(batch[1].shape[0] == 1 for batch in dataset.take(2))
        seen.extend(labels)
    assert sorted(seen) == list(range(NUM_IMAGES))


def test_one_based_labels_with_label_offset(converted, config, stored):
    one_based = converted(ASSORTED.replace(label_offset=1))  # labels 1..24, classic style
    pattern = data.file_pattern(str(one_based), "train")
    zero_based = [r.label for r in stored]  # the same records in the same order, 0-based
    assert [r.label for r in read_records(one_based, "train")] == [label + 1 for label in zero_based]
    assert _labels(data.make_dataset(pattern, False, config.replace(label_offset=1))) == zero_based
    assert _labels(data.make_dataset(pattern, False, config)) == [label + 1 for label in zero_based]
    # Class 999 of a 1-based set (stored 1000) read without the offset is out of range: a clear error.
    assert max(r.label for r in read_records(one_based, "validation")) == 1000
    with pytest.raises(tf.errors.InvalidArgumentError, match="label_offset"):
        list(data.make_dataset(data.file_pattern(str(one_based), "validation"), False, config))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
@pytest.mark.parametrize("training", [True, False])
def test_corrupt_shard_error_names_the_file(tmp_path, shards, config, damage, training):
    shards = copy_shards(shards, tmp_path / "records")
    victim = sorted(tf.io.gfile.glob(data.file_pattern(str(shards), "train")))[1]
    blob = bytearray(pathlib.Path(victim).read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) * 2 // 3]
    else:
        blob[len(blob) // 2] ^= 0xFF
    pathlib.Path(victim).write_bytes(bytes(blob))
    dataset = data.make_dataset(data.file_pattern(str(shards), "train"), training, config, repeat=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=os.path.basename(victim)) as error:
        list(dataset)
    assert "Corrupt or truncated TFRecord shard" in str(error.value)


def test_intact_shards_pass_the_size_check(shards, config):
    """All records of intact shards arrive (the framing arithmetic matches real files)."""
    dataset = data.make_dataset(data.file_pattern(str(shards), "train"), True, config, repeat=False)
    assert len(_labels(dataset)) == NUM_IMAGES


def test_statistics_beside_the_shards_are_used(shards, config, stored, tmp_path):
    shards = copy_shards(shards, tmp_path / "records")
    stats = imagenet_statistics()
    stats.mean_rgb = np.array([1.0, 2.0, 3.0], np.float32)
    stats.eigenvalues = np.zeros(3, np.float32)  # no colour noise
    stats.save(str(shards))
    pattern = data.file_pattern(str(shards), "train")
    # The mean reaches the device through the run's inputs.
    inputs = sources.record_inputs(config, str(shards))
    features, _ = next(iter(data.make_dataset(pattern, False, config)))
    images = device_preprocess.DeviceFinish(config, inputs.stats)(features)
    expected = device_preprocess.preprocess_for_eval(stored[0].encoded, config, imagenet_statistics()).numpy()
    # The published means were subtracted there; here (1, 2, 3).
    np.testing.assert_allclose(
        images[0].numpy(), expected + imagenet_statistics().mean_rgb - [1, 2, 3], atol=1e-3
    )
    # The host draws the colour noise from the eigen-decomposition beside the shards: none here.
    features, _ = next(iter(data.make_dataset(pattern, True, config.replace(pca_std=0.1))))
    np.testing.assert_array_equal(features.rgb.numpy(), 0.0)


def test_real_jpegs_through_the_pipeline(converted):
    real = converted(IMAGENETTE)  # Imagenette photographs, converted
    config = get_config("paper", batch_size=4, shuffle_buffer=16)
    features, labels = next(iter(data.make_dataset(data.file_pattern(str(real), "train"), True, config)))
    assert features.image.shape == (4, 227, 227, 3) and labels.shape == (4,)
    images = device_preprocess.DeviceFinish(config, load_statistics(str(real)))(features)
    # Mean-subtracted raw pixels: centred near 0, on the 0-255 scale.
    assert -128 < float(tf.reduce_mean(images)) < 128 and float(tf.reduce_max(images)) > 50


def test_reads_shards_built_by_the_converter(converted, shared_data):
    from alexnet_tf import imagenet

    real = converted(IMAGENETTE)
    synsets = imagenet.load_synsets(str(shared_data / "metadata" / "imagenette_synsets.txt"))
    stored = read_records(real, "validation")
    # The converter labels each image by its folder's place in the labels file.
    assert [r.label for r in stored] == [synsets.index(r.synset) for r in stored]
    expected = sorted(r.label for r in stored)
    assert expected == sorted(list(range(len(synsets))) * IMAGENETTE.val_per_class)
    config = get_config("paper", batch_size=2, shuffle_buffer=8)
    pattern = data.file_pattern(str(real), "validation")
    evaluated = list(data.make_dataset(pattern, False, config))
    assert _labels(evaluated) == [r.label for r in stored]
    assert evaluated[0][0].image.shape == (2, 227, 227, 3)
    trained = list(data.make_dataset(pattern, True, config, repeat=False))
    assert sorted(_labels(trained)) == expected


def test_record_counts_come_from_the_manifest_else_from_the_shards(tmp_path, converted):
    copy_shards(converted(ASSORTED), tmp_path / "records")
    tmp_path = tmp_path / "records"
    (tmp_path / records.MANIFEST_FILE).unlink()
    assert data.manifest_record_count(str(tmp_path), "train") is None
    assert data.count_records(str(tmp_path), "train") == len(ASSORTED.train_labels)  # read from the shards
    # The converter's manifest is believed without reading the shards.
    manifest = {"splits": {records.TRAIN_PREFIX: {"num_records": 1000}}}
    (tmp_path / records.MANIFEST_FILE).write_text(json.dumps(manifest))
    assert data.manifest_record_count(str(tmp_path), "train") == 1000
    assert data.count_records(str(tmp_path), "train") == 1000
    assert data.manifest_record_count(str(tmp_path), "validation") is None
    (tmp_path / records.MANIFEST_FILE).write_text("not json")
    with pytest.raises(ValueError, match="manifest.json is not a converter manifest"):
        data.manifest_record_count(str(tmp_path), "train")


# What a (re)started training process does before it builds its pipeline (Trainer seeds Python,
# NumPy, TensorFlow and Keras with config.seed), then the file order of the pipeline's first two
# passes and the first augmentation draws.
RESTART_PROBE = """
import json, sys
import keras, tensorflow as tf
from alexnet_tf import data, sources
from alexnet_tf.config import get_config
from alexnet_tf.statistics import imagenet_statistics
deterministic, epoch = sys.argv[1] == "1", int(sys.argv[2])
config = get_config("tiny", deterministic=deterministic)
keras.utils.set_random_seed(config.seed)
config = config.replace(seed=sources.epoch_seed(config, epoch))  # as record_inputs does per epoch
names = [f"train-{i:05d}-of-00032" for i in range(32)]
files = data.shuffle_files(tf.data.Dataset.from_tensor_slices(names), len(names), config, 0).repeat(2)
order = [name.decode() for name in files.as_numpy_iterator()]
draws = next(iter(data.augmentation_draws(config, imagenet_statistics(), 0).batch(16)))
draws = {k: v.numpy().tolist() for k, v in draws._asdict().items()}
print(json.dumps({"passes": [order[:32], order[32:]], "draws": draws}))
"""


def _start(deterministic: bool, epoch: int = 0) -> dict:
    result = run_python(["-c", RESTART_PROBE, int(deterministic), epoch], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_restarted_run_draws_new_file_orders_and_augmentation():
    """Two epochs in one process, then a restart whose first epoch is the third."""
    first_run, restarted = _start(False), _start(False)
    epoch_1, epoch_2 = first_run["passes"]
    epoch_3 = restarted["passes"][0]
    assert sorted(epoch_3) == sorted(epoch_1) and epoch_1 != epoch_2
    assert epoch_3 != epoch_1 and epoch_3 != epoch_2
    for key in ("crop", "flip", "rgb"):
        assert restarted["draws"][key] != first_run["draws"][key], key


def test_deterministic_orders_and_draws_are_a_function_of_seed_and_epoch():
    epoch_0, again, epoch_2 = _start(True, 0), _start(True, 0), _start(True, 2)
    assert epoch_0 == again
    assert epoch_2["passes"][0] != epoch_0["passes"][0]
    for key in ("crop", "flip", "rgb"):
        assert epoch_2["draws"][key] != epoch_0["draws"][key], key
