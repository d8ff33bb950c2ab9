"""BVLC AlexNet weights in the paper network, checked against Caffe's forward pass in NumPy.

The weights are random but scaled as trained ones are (conv1's ReLUs in the hundreds, so LRN
divides them by several; probabilities far from uniform), written in each file format by
tests/caffe_reference.py, and the full-size network runs once in NumPy per session. The tests
that read the full-size files are marked slow: together they take about a minute.
"""

from __future__ import annotations

import json
import pathlib

import keras
import numpy as np
import pytest

from alexnet_tf import caffe, load_reference_weights, reports
from alexnet_tf.layers import LocalResponseNormalization
from tests.support import ROOT, run_python
from tests.support.caffe_reference import (
    CAFFE,
    random_images,
    random_weights,
    tensorflow_layout,
    write_binaryproto_mean,
    write_caffemodel,
    write_npy,
)
from tests.support.caffe_reference import caffe_forward as numpy_caffe_forward
from tests.support.converted import ASSORTED

# Keras layer -> Caffe blob, in the order the network computes them.
BLOBS = {"conv1": "conv1", "lrn1": "norm1", "pool1": "pool1", "conv2": "conv2", "lrn2": "norm2",
         "pool2": "pool2", "conv3": "conv3", "conv4": "conv4", "conv5": "conv5", "pool5": "pool5",
         "fc6": "fc6", "fc7": "fc7", "fc8": "fc8", "prob": "prob"}  # fmt: skip
RELATIVE_TOLERANCE = 1e-4  # of each blob's largest magnitude: float32 against float64
PROBABILITY_TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def reference():
    """Random trained-like weights, two RGB images, and Caffe's blobs for them (NumPy, once)."""
    weights = random_weights()
    images = random_images(2)
    blobs = [numpy_caffe_forward(weights, image.transpose(2, 0, 1)[::-1]) for image in images]  # RGB -> BGR CHW
    stacked = {name: np.stack([b[name] for b in blobs]) for name in blobs[0]}
    return weights, images, stacked


@pytest.fixture(scope="session")
def weight_files(reference, tmp_path_factory) -> dict[str, pathlib.Path]:
    """The same weights as a legacy and a current .caffemodel, and a .npy (Python 3 and Python 2 pickles)."""
    weights = reference[0]
    directory = tmp_path_factory.mktemp("reference_weights")
    files = {name: directory / name for name in ("legacy.caffemodel", "current.caffemodel", "py3.npy", "py2.npy")}
    write_caffemodel(str(files["legacy.caffemodel"]), weights, legacy=True)
    write_caffemodel(str(files["current.caffemodel"]), weights, legacy=False)
    write_npy(str(files["py3.npy"]), tensorflow_layout(weights))
    write_npy(str(files["py2.npy"]), tensorflow_layout(weights), python2=True)
    return files


def _as_caffe_blob(array: np.ndarray) -> np.ndarray:
    return array.transpose(0, 3, 1, 2) if array.ndim == 4 else array  # NHWC -> NCHW


def _relative_error(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(found - expected).max() / np.abs(expected).max())


def test_reference_weights_are_trained_like(reference):
    """The proof is only as good as its magnitudes: LRN far from the identity, probabilities far from uniform."""
    _, images, blobs = reference
    assert np.abs(images).max() > 100
    active = blobs["conv1"] > 1
    shrink = (blobs["norm1"][active] / blobs["conv1"][active]).mean()
    assert shrink < 0.8  # LRN with Caffe's constants divides conv1's ReLUs noticeably
    assert blobs["prob"].max(axis=1).min() > 50 / 1000  # top class 50x above uniform


@pytest.mark.slow
def test_every_format_reads_to_the_same_weights(weight_files, reference):
    legacy = caffe.read_reference_weights(str(weight_files["legacy.caffemodel"]))
    assert list(legacy) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    for name in ("current.caffemodel", "py3.npy", "py2.npy"):
        other = caffe.read_reference_weights(str(weight_files[name]))
        for layer, (kernel, bias) in legacy.items():
            np.testing.assert_array_equal(other[layer][0], kernel, err_msg=f"{name} {layer}")
            np.testing.assert_array_equal(other[layer][1], bias, err_msg=f"{name} {layer}")
    # TowerConv2D's kernel: (h, w, in / towers, out); conv1 reads RGB: Caffe's input channel 0 (B) is last.
    assert legacy["conv2"][0].shape == (5, 5, 48, 256)
    np.testing.assert_array_equal(legacy["conv1"][0][:, :, 2, 7], reference[0]["conv1"][0][7, 0])


@pytest.fixture(scope="session")
def legacy_model(weight_files):
    return load_reference_weights(str(weight_files["legacy.caffemodel"]))


@pytest.mark.slow
def test_forward_matches_caffe_layer_by_layer(legacy_model, reference):
    _, images, blobs = reference
    probe = keras.Model(legacy_model.input, [legacy_model.get_layer(name).output for name in BLOBS])
    outputs = probe.predict(images, verbose=0)
    for (layer, blob), found in zip(BLOBS.items(), outputs, strict=True):
        found = _as_caffe_blob(found)
        assert found.shape == blobs[blob].shape, layer
        error = _relative_error(found, blobs[blob])
        assert error < RELATIVE_TOLERANCE, f"{layer}: largest difference {error:.2e} of Caffe's {blob} magnitude"
    np.testing.assert_allclose(outputs[-1], blobs["prob"], rtol=0, atol=PROBABILITY_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["current.caffemodel", "py3.npy"])  # py2.npy: the same arrays as py3.npy
def test_every_format_gives_caffes_probabilities(name, weight_files, reference):
    _, images, blobs = reference
    model = load_reference_weights(str(weight_files[name]))
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities, blobs["prob"], rtol=0, atol=PROBABILITY_TOLERANCE)
    assert (probabilities.argmax(axis=1) == blobs["prob"].argmax(axis=1)).all()


@pytest.mark.slow
def test_features_model_gives_fc7(weight_files, reference):
    _, images, blobs = reference
    features = load_reference_weights(str(weight_files["py3.npy"]), include_top=False)
    fc7 = features.predict(images, verbose=0)
    assert fc7.shape == (2, 4096)
    assert _relative_error(fc7, blobs["fc7"]) < RELATIVE_TOLERANCE


@pytest.mark.slow
def test_model_carries_caffes_conventions(legacy_model):
    assert legacy_model.count_params() == 60_965_224
    lrn = [layer for layer in legacy_model.layers if isinstance(layer, LocalResponseNormalization)]
    assert [(x.name, x.size, x.k, x.alpha, x.beta, x.convention) for x in lrn] == [
        (name, 5, 1.0, 1e-4, 0.75, "caffe") for name in ("lrn1", "lrn2")
    ]
    assert "pixel_scale" not in [layer.name for layer in legacy_model.layers]  # no input scaling layer
    assert legacy_model.input.shape[1:] == (227, 227, 3)
    config = caffe.reference_config()
    assert (config.lrn_k, config.lrn_alpha, config.lrn_alpha_convention) == (1.0, 1e-4, "caffe")
    assert (config.channel_order, config.mean_source, config.resize_mode, config.pca_std) == ("bgr", "caffe",
                                                                                              "squash", 0.0)
    assert caffe.reference_config().from_json(config.to_json()) == config


@pytest.mark.slow
def test_saved_model_keeps_caffes_lrn(legacy_model, reference, tmp_path):
    """Reloaded from a .keras file the network still normalises as Caffe did."""
    path = tmp_path / "reference.keras"
    legacy_model.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.get_layer("lrn1").convention == "caffe"
    np.testing.assert_allclose(reloaded.predict(reference[1], verbose=0), reference[2]["prob"], atol=1e-4)


def test_outputs_follow_bvlcs_class_order(shared_data):
    """BVLC's synsets.txt (data/ilsvrc12) lists the 1000 wnids sorted: the project's label order."""
    shipped = (pathlib.Path(caffe.__file__).parent / "resources" / "imagenet_lsvrc_2015_synsets.txt").read_text()
    wnids = shipped.split()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    assert wnids == (shared_data / "metadata" / "imagenet_lsvrc_2015_synsets.txt").read_text().split()


# --- Refusals ---


def _zeros(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {name: (np.zeros(shape, np.float32), np.zeros(shape[0], np.float32)) for name, shape in shapes.items()}


def _edited(source: pathlib.Path, target: pathlib.Path, edit) -> str:
    net = CAFFE["NetParameter"].FromString(source.read_bytes())
    edit(net)
    target.write_bytes(net.SerializeToString())
    return str(target)


def test_refuses_vgg(tmp_path):
    weights = _zeros({"conv1_1": (64, 3, 3, 3), "conv1_2": (64, 64, 3, 3)})
    layers = [("conv1_1", "Convolution"), ("relu1_1", "ReLU"), ("conv1_2", "Convolution"), ("pool1", "Pooling")]
    path = tmp_path / "vgg.caffemodel"
    write_caffemodel(str(path), weights, legacy=False, layers=layers)
    with pytest.raises(caffe.ReferenceWeightsError, match=r"'conv1_1'.*conv1.*\(96, 3, 11, 11\).*\(64, 3, 3, 3\)"):
        load_reference_weights(str(path))


def test_refuses_a_one_tower_alexnet(tmp_path):
    weights = _zeros({"conv1": (96, 3, 11, 11), "conv2": (256, 96, 5, 5)})
    path = tmp_path / "one_tower.caffemodel"
    write_caffemodel(str(path), weights, legacy=True, layers=[("conv1", "Convolution"), ("conv2", "Convolution")])
    with pytest.raises(caffe.ReferenceWeightsError, match=r"'conv2'.*\(256, 48, 5, 5\) expected, found \(256, 96"):
        caffe.read_reference_weights(str(path))


@pytest.mark.slow
def test_refuses_caffenet(weight_files, tmp_path):
    def pool_before_norm(net):
        names = [layer.name for layer in net.layers]
        norm, pool = names.index("norm1"), names.index("pool1")
        kept = CAFFE["V1LayerParameter"]()
        kept.CopyFrom(net.layers[norm])
        net.layers[norm].CopyFrom(net.layers[pool])
        net.layers[pool].CopyFrom(kept)

    path = _edited(weight_files["legacy.caffemodel"], tmp_path / "caffenet.caffemodel", pool_before_norm)
    with pytest.raises(caffe.ReferenceWeightsError, match=r"'pool1' is a Pooling where AlexNet has LRN.*CaffeNet"):
        caffe.read_reference_weights(path)


@pytest.mark.slow
def test_refuses_other_lrn_constants(weight_files, tmp_path):
    def papers_k(net):
        next(layer for layer in net.layer if layer.name == "norm2").lrn_param.k = 2.0

    path = _edited(weight_files["current.caffemodel"], tmp_path / "k2.caffemodel", papers_k)
    with pytest.raises(caffe.ReferenceWeightsError, match=r"'norm2': lrn_param k 1.0 expected .* found 2.0"):
        caffe.read_reference_weights(path)


def test_refuses_other_convolution_settings(tmp_path):
    weights = _zeros({"conv1": (96, 3, 11, 11)})
    path = tmp_path / "stride.caffemodel"
    data = write_caffemodel(str(path), weights, legacy=False, layers=[("conv1", "Convolution")])
    net = CAFFE["NetParameter"].FromString(data)
    net.layer[0].convolution_param.stride[0] = 2
    path.write_bytes(net.SerializeToString())
    with pytest.raises(caffe.ReferenceWeightsError, match=r"'conv1'.*convolution_param stride 4 expected, found 2"):
        caffe.read_reference_weights(str(path))


@pytest.mark.slow
def test_refuses_truncated_files(weight_files, tmp_path):
    whole = weight_files["legacy.caffemodel"].read_bytes()
    half = tmp_path / "half.caffemodel"
    half.write_bytes(whole[: len(whole) // 2])  # inside fc6, the largest layer
    with pytest.raises(caffe.ReferenceWeightsError, match=r"truncated: it ends inside layer 'fc6'"):
        caffe.read_reference_weights(str(half))

    def drop_fc8(net):
        del net.layers[-2:]

    path = _edited(weight_files["legacy.caffemodel"], tmp_path / "no_fc8.caffemodel", drop_fc8)
    with pytest.raises(caffe.ReferenceWeightsError, match=r"fc8 \(weights \(1000, 4096\)\) is missing.*after fc7"):
        caffe.read_reference_weights(path)


def test_refuses_what_is_not_a_caffemodel(tmp_path):
    path = tmp_path / "noise.caffemodel"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(caffe.ReferenceWeightsError):
        caffe.read_reference_weights(str(path))


def test_refuses_npy_of_other_networks(tmp_path, reference):
    vgg = tmp_path / "vgg.npy"
    write_npy(str(vgg), {"conv1_1": [np.zeros((3, 3, 3, 64), np.float32), np.zeros(64, np.float32)]})
    with pytest.raises(caffe.ReferenceWeightsError, match=r"no layer 'conv1'.*conv1_1"):
        caffe.read_reference_weights(str(vgg))
    one_tower = tensorflow_layout(_zeros({"conv1": (96, 3, 11, 11), "conv2": (256, 96, 5, 5)}))
    path = tmp_path / "one_tower.npy"
    write_npy(str(path), one_tower)
    with pytest.raises(caffe.ReferenceWeightsError, match=r"'conv2'.*\(5, 5, 48, 256\).*\(5, 5, 96, 256\)"):
        caffe.read_reference_weights(str(path))
    numeric = tmp_path / "numeric.npy"
    np.save(numeric, np.zeros(3))
    with pytest.raises(caffe.ReferenceWeightsError, match="not a pickled dict"):
        caffe.read_reference_weights(str(numeric))


class _Touch:
    """A pickled object whose unpickling would create a file."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def test_npy_unpickles_arrays_lists_and_dicts_only(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "hostile.npy"
    write_npy(str(path), {"conv1": [np.zeros(3, np.float32), _Touch(marker)]})
    with pytest.raises(caffe.ReferenceWeightsError, match=r"pathlib.*Path.touch.*only NumPy arrays, lists and dicts"):
        caffe.read_npy(str(path))
    assert not marker.exists()


def test_npy_accepts_caffe_tensorflow_named_parameters(tmp_path):
    """caffe-tensorflow's own converter names the pair: {"weights": ..., "biases": ...}."""
    path = tmp_path / "named.npy"
    kernel, bias = np.ones((3, 3, 4, 2), np.float32), np.arange(2, dtype=np.float32)
    write_npy(str(path), {"conv9": {"weights": kernel, "biases": bias}})
    layers = caffe.read_npy(str(path))
    np.testing.assert_array_equal(layers["conv9"][0], kernel)
    np.testing.assert_array_equal(layers["conv9"][1], bias)


# --- Caffe's mean ---


def test_mean_image_from_binaryproto_and_the_per_channel_mean(tmp_path):
    mean_bgr = np.random.default_rng(0).uniform(0, 255, (3, 256, 256)).astype(np.float32)
    path = tmp_path / "imagenet_mean.binaryproto"
    write_binaryproto_mean(str(path), mean_bgr)
    image = caffe.read_binaryproto_mean(str(path))
    assert image.shape == (256, 256, 3)
    np.testing.assert_array_equal(image[..., 0], mean_bgr[2])  # R first
    np.testing.assert_array_equal(image[..., 2], mean_bgr[0])
    stats = caffe.reference_statistics(str(path))
    np.testing.assert_array_equal(stats.mean_image, image)
    per_channel = caffe.reference_statistics()
    assert per_channel.mean_image is None
    np.testing.assert_allclose(per_channel.mean_rgb, (122.68, 116.67, 104.01), atol=0.01)


@pytest.mark.slow
def test_evaluate_py_runs_the_reference_weights(weight_files, converted, tmp_path):
    """``evaluate.py --weights=FILE --data_dir=RECORDS --mean_file=MEAN``: Caffe's conventions, a report."""
    mean = tmp_path / "imagenet_mean.binaryproto"
    write_binaryproto_mean(str(mean), np.full((3, 256, 256), 110.0, np.float32))
    report_dir = tmp_path / "report"
    command = [str(ROOT / "evaluate.py"), f"--weights={weight_files['legacy.caffemodel']}",
               f"--data_dir={converted(ASSORTED)}", f"--mean_file={mean}", f"--report_dir={report_dir}",
               "--noten_crop", "--batch_size=8"]
    result = run_python(command, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Caffe's conventions: LRN k=1, alpha=0.0001/5" in result.stderr
    report = json.loads((report_dir / reports.REPORT_JSON).read_text())
    assert report["num_classes"] == 1000 and report["statistics"] == str(mean)
    assert 0.0 <= report["center_crop"]["top1_error"] <= 1.0
    usage = run_python([str(ROOT / "evaluate.py"), f"--mean_file={mean}", "--saved_model=x"],
                       timeout=300, cwd=tmp_path)
    assert usage.returncode != 0 and "--mean_file is Caffe's mean image: it goes with --weights" in usage.stderr
