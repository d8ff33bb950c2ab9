"""The LiteRT export: the file and its named files, the runtime against Keras, the crop helper, evaluate.py."""

from __future__ import annotations

import io
import json
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import device_preprocess, evaluation, litert, preprocess, reports
from alexnet_tf import workdir as workdir_lib
from alexnet_tf.layers import LocalResponseNormalization
from alexnet_tf.model import build_from_config
from tests.support import ROOT, run_python

LARGE_JPEG = "imagenet-sample/train/n01440764/n01440764_tench.JPEG"
GRAYSCALE_JPEG = "imagenet-sample/train/n02692877/n02692877_airship.JPEG"  # mode L, 350x156
# int8 weights with activations quantised on the fly move a probability of the tiny trained model by
# thousandths; the bound leaves room for other CPUs' kernels. float32 in the file keeps Keras's answer.
QUANTISED_PROBABILITY_TOLERANCE = 0.02
FLOAT32_PROBABILITY_TOLERANCE = 1e-5


def require_litert() -> None:
    """A skip naming the missing runtime; under CI (which installs it) a failure instead."""
    if litert.runtime_available():
        return
    message = f"the LiteRT runtime (ai_edge_litert) is not installed: {litert.INSTALL_HINT}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def litert_file(run, tmp_path_factory) -> str:
    """``tiny_run`` exported with int8 weights (the default)."""
    path = tmp_path_factory.mktemp("litert") / "alexnet.tflite"
    return litert.export_litert(run.model, str(path), run.config, run.stats, run.wnids, run.names)


@pytest.fixture(scope="module")
def float32_litert_file(run, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("litert_f32") / "alexnet.tflite"
    return litert.export_litert(run.model, str(path), run.config, run.stats, run.wnids, run.names,
                                quantization="float32")


def _keras_probabilities(run, images: list[bytes]) -> np.ndarray:
    """The evaluation's centre crop through the Keras model."""
    views = np.stack([device_preprocess.preprocess_for_eval(tf.constant(e), run.config, run.stats) for e in images])
    return np.asarray(run.model(views, training=False))


def _real_images(shared_data, run) -> dict[str, bytes]:
    buffer = io.BytesIO()
    Image.open(shared_data / LARGE_JPEG).convert("RGBA").save(buffer, format="PNG")
    return {
        "jpeg_224": run.val_images[0],
        "jpeg_large": (shared_data / LARGE_JPEG).read_bytes(),
        "jpeg_gray": (shared_data / GRAYSCALE_JPEG).read_bytes(),
        "png_rgba": buffer.getvalue(),
    }


def test_missing_runtime_skips_locally_and_fails_under_ci(monkeypatch):
    monkeypatch.setattr(litert, "runtime_available", lambda: False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="ai_edge_litert"):
        require_litert()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_litert()


def test_export_writes_the_file_and_its_named_files(run, litert_file):
    files = litert.sidecar_paths(litert_file)
    assert files.labels.endswith("alexnet.labels.txt") and files.description.endswith("alexnet.json")
    assert pathlib.Path(files.labels).read_text(encoding="utf-8").splitlines() == run.names
    record = json.loads(pathlib.Path(files.description).read_text(encoding="utf-8"))
    size = run.config.input_size
    assert record["input"] == {"name": "image", "dtype": "float32", "shape": [-1, size, size, 3], "range": "0-255",
                               "channels": "RGB"}
    assert record["output"]["shape"] == [-1, run.config.num_classes]
    assert record["wnids"] == run.wnids and record["quantization"] == "dynamic_range"
    assert record["preprocessing"]["mean_subtracted_inside"] and record["preprocessing"]["mean_subtraction"] == "image"
    assert json.dumps(record["config"], sort_keys=True) == json.dumps(json.loads(run.config.to_json()), sort_keys=True)
    np.testing.assert_array_equal(np.load(files.mean_image), preprocess.mean_to_subtract(run.config, run.stats))
    stats = litert.load_statistics(litert_file)
    np.testing.assert_allclose(stats.mean_rgb, run.stats.mean_rgb, rtol=1e-6)
    np.testing.assert_array_equal(stats.mean_image, preprocess.mean_to_subtract(run.config, run.stats))


def test_export_refuses_bad_arguments(run, tmp_path):
    with pytest.raises(ValueError, match=r"\.tflite"):
        litert.export_litert(run.model, str(tmp_path / "model.bin"), run.config, run.stats, run.wnids, run.names)
    with pytest.raises(ValueError, match="one of each per class"):
        litert.export_litert(run.model, str(tmp_path / "m.tflite"), run.config, run.stats, run.wnids[:3], run.names)
    with pytest.raises(ValueError, match="quantization"):
        litert.convert(run.model, run.config, run.stats, quantization="int4")


def test_weights_are_int8_and_the_file_a_third_of_float32(run, litert_file, float32_litert_file):
    require_litert()
    from ai_edge_litert.interpreter import Interpreter

    def int8_elements_and_ops(path: str) -> tuple[int, set[str]]:
        interpreter = Interpreter(model_path=path)
        elements = sum(int(np.prod(d["shape"])) for d in interpreter.get_tensor_details() if d["dtype"] == np.int8)
        return elements, {d["op_name"] for d in interpreter._get_ops_details()}

    # Every convolution and fully connected kernel, and nothing else, is stored in int8.
    kernels = sum(int(np.prod(w.shape)) for w in run.model.weights if w.path.endswith("kernel"))
    quantised, ops = int8_elements_and_ops(litert_file)
    assert quantised == kernels
    assert int8_elements_and_ops(float32_litert_file)[0] == 0
    assert os.path.getsize(litert_file) < 0.4 * os.path.getsize(float32_litert_file)
    # The towers' split convolutions and LRN's elementwise form are LiteRT builtins: no TensorFlow (Flex)
    # ops; neither LiteRT's builtin LRN kernel nor Flatten's run-time shape ops, which XNNPACK does not take.
    assert {"SPLIT", "CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "SUB", "SQUARE", "RSQRT", "SQRT", "RESHAPE"} <= ops, ops
    assert not ops & {"LOCAL_RESPONSE_NORMALIZATION", "SHAPE", "PACK"}, ops
    assert not any(op.startswith("Flex") for op in ops), ops


@pytest.mark.parametrize("quantization", litert.QUANTIZATIONS)
def test_xnnpack_takes_the_whole_file(run, litert_file, float32_litert_file, quantization):
    """One XNNPACK partition from the input to the softmax: no op is left to the runtime's own kernels."""
    require_litert()
    from ai_edge_litert.interpreter import Interpreter

    path = litert_file if quantization == "dynamic_range" else float32_litert_file
    interpreter = Interpreter(model_path=path, num_threads=litert.DEFAULT_THREADS)
    interpreter.allocate_tensors()
    delegated = [op for op in interpreter._get_ops_details() if op["op_name"] == "DELEGATE"]
    assert len(delegated) == 1, [op["op_name"] for op in interpreter._get_ops_details()]
    signature = interpreter.get_signature_runner(litert.SIGNATURE)
    assert signature.get_input_details()[litert.INPUT]["index"] in delegated[0]["inputs"]
    assert list(delegated[0]["outputs"]) == [signature.get_output_details()[litert.OUTPUT]["index"]]


@pytest.mark.parametrize("size,k,alpha,beta,convention", [
    (5, 2.0, 1e-4, 0.75, "paper"),  # the paper's
    (5, 1.0, 1e-4, 0.75, "caffe"),  # bvlc_alexnet's
    (3, 2.0, 1e-3, 0.5, "paper"),  # another window and exponent: the exp/log form
])
def test_elementwise_lrn_computes_the_layer(size, k, alpha, beta, convention):
    layer = LocalResponseNormalization(size=size, k=k, alpha=alpha, beta=beta, convention=convention, name="lrn1")
    # ReLU outputs as conv1's on 0-255 pixels reach them: up to a few hundred, many zeros, odd channel counts.
    x = np.maximum(np.random.default_rng(size).normal(0.0, 150.0, (2, 7, 6, 11)), 0.0).astype(np.float32)
    expected = np.asarray(layer(x))
    elementwise = litert.ElementwiseLRN(layer)
    assert elementwise.name == "lrn1"
    got = np.asarray(elementwise(x))
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6)
    # Not the identity: the normalisation shrinks the large activations.
    assert np.abs(expected - x).max() > 1.0

    @tf.function
    def in_graph(t):
        return elementwise(t)

    np.testing.assert_allclose(in_graph(tf.constant(x)).numpy(), expected, rtol=2e-6, atol=1e-6)


def test_litert_network_is_the_network(run):
    network = litert.litert_network(run.model)
    kinds = [type(layer).__name__ for layer in network.layers]
    assert kinds.count("ElementwiseLRN") == 2 and kinds.count("FixedFlatten") == 1
    assert "LocalResponseNormalization" not in kinds and "Flatten" not in kinds
    # The other layers are shared, not copied: the same weights.
    assert [id(w) for w in network.weights] == [id(w) for w in run.model.weights]
    crops = litert.centre_crops(run.val_images[:4], run.config) - litert.mean_window(run.config, run.stats)
    np.testing.assert_allclose(network(crops, training=False), run.model(crops, training=False), atol=1e-6)


def test_runtime_answers_as_the_keras_model(shared_data, run, litert_file, float32_litert_file):
    require_litert()
    images = run.val_images
    expected = _keras_probabilities(run, images)
    crops = litert.centre_crops(images, run.config)
    quantised = litert.LiteRTModel(litert_file)
    got = quantised.predict(crops)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean(got.argmax(axis=1) == expected.argmax(axis=1)) >= 0.95
    assert np.abs(got - expected).max() < QUANTISED_PROBABILITY_TOLERANCE
    # Not an identity by accident: the quantised answers do differ from float32 a little.
    assert np.abs(got - expected).max() > 0
    plain = litert.LiteRTModel(float32_litert_file).predict(crops)
    np.testing.assert_allclose(plain, expected, atol=FLOAT32_PROBABILITY_TOLERANCE)
    # Batch 1 and a batch of all give the same answers (the runtime resizes its input).
    np.testing.assert_allclose(quantised.predict(crops[:1]), got[:1], atol=1e-6)
    assert quantised.names == run.names and quantised.wnids == run.wnids and quantised.config == run.config


def test_runtime_answers_from_threads_as_alone(run, litert_file):
    require_litert()
    from concurrent.futures import ThreadPoolExecutor

    model = litert.LiteRTModel(litert_file)
    crops = litert.centre_crops(run.val_images[:8], run.config)
    alone = [model.predict(crops[i:i + 1]) for i in range(len(crops))]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: model.predict(crops[i:i + 1]), list(range(len(crops))) * 3))
    for i, got in enumerate(together):
        np.testing.assert_array_equal(got, alone[i % len(crops)])


def test_centre_crop_is_the_evaluation_crop(shared_data, run):
    """The helper's pixels are eval_crop's, and minus the mean window they are preprocess_for_eval's view."""
    window = litert.mean_window(run.config, run.stats)
    assert window.shape == (run.config.input_size, run.config.input_size, 3)

    @tf.function
    def in_graph(encoded):
        return litert.centre_crop(encoded, run.config)

    for name, encoded in _real_images(shared_data, run).items():
        crop = litert.centre_crop(encoded, run.config).numpy()
        assert crop.dtype == np.float32 and crop.shape == window.shape, name
        np.testing.assert_array_equal(
            crop, preprocess.eval_crop(tf.constant(encoded), run.config.image_size, run.config.input_size).image)
        view = device_preprocess.preprocess_for_eval(tf.constant(encoded), run.config, run.stats).numpy()
        np.testing.assert_allclose(crop - window, view, atol=1e-4, err_msg=name)
        np.testing.assert_array_equal(in_graph(tf.constant(encoded)).numpy(), crop)
    mapped = tf.data.Dataset.from_tensor_slices(run.val_images[:3]).map(lambda e: litert.centre_crop(e, run.config))
    np.testing.assert_array_equal(np.stack(list(mapped.as_numpy_iterator())),
                                  litert.centre_crops(run.val_images[:3], run.config))


def test_centre_crop_refuses_what_the_saved_model_refuses(shared_data, run):
    encoded = (shared_data / LARGE_JPEG).read_bytes()
    with pytest.raises(tf.errors.InvalidArgumentError, match="Image refused"):
        litert.centre_crop(encoded, run.config, max_pixels=100 * 100)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Not a JPEG or PNG"):
        litert.centre_crop(b"GIF89a" + b"\x00" * 30, run.config)


def test_channel_mean_is_folded_in_too(run, tmp_path):
    require_litert()
    config = run.config.replace(mean_subtraction="channel")
    path = litert.export_litert(run.model, str(tmp_path / "m.tflite"), config, run.stats, run.wnids, run.names,
                                quantization="float32")
    assert not os.path.exists(litert.sidecar_paths(path).mean_image)
    crops = litert.centre_crops(run.val_images[:4], config)
    expected = run.model(crops - np.asarray(run.stats.mean_rgb, np.float32), training=False)
    np.testing.assert_allclose(litert.LiteRTModel(path).predict(crops), expected, atol=FLOAT32_PROBABILITY_TOLERANCE)


def test_a_mixed_precision_model_is_exported_from_its_float32_weights(run):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = build_from_config(run.config, seed=0)
    finally:
        keras.config.set_dtype_policy("float32")
    mixed.set_weights(run.model.get_weights())
    copy = litert.float32_model(mixed)
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    for weight, original in zip(copy.weights, run.model.weights, strict=True):
        np.testing.assert_array_equal(weight.numpy(), original.numpy())
    assert litert.float32_model(run.model) is run.model


def test_the_evaluator_scores_the_file_as_the_keras_model(run, float32_litert_file, litert_file):
    """Through the same evaluator: float32 in the file gives the Keras report, int8 weights nearly."""
    require_litert()
    keras_report = evaluation.evaluate(run.model, run.config, run.data_dir, progress=False, stats=run.stats)
    predict, config, stats = litert.load_predictor(float32_litert_file)
    assert config == run.config
    plain = evaluation.evaluate(predict, config, run.data_dir, progress=False, stats=stats)
    predict, config, stats = litert.load_predictor(litert_file)
    quantised = evaluation.evaluate(predict, config, run.data_dir, progress=False, stats=stats)
    images = keras_report["num_images"]
    for view in ("center_crop", "ten_crop"):
        assert plain[view]["top1_error"] == keras_report[view]["top1_error"]
        assert plain[view]["top5_error"] == keras_report[view]["top5_error"]
        assert abs(quantised[view]["top1_error"] - keras_report[view]["top1_error"]) <= 1 / images + 1e-9


@pytest.mark.slow
def test_command_lines_export_and_evaluate_a_litert_file(shared_data, run, tmp_path):
    require_litert()
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / workdir_lib.CONFIG_FILE).write_text(run.config.to_json())
    run.model.save(workdir / workdir_lib.MODEL_FILE)
    run.stats.save(str(workdir))
    path = tmp_path / "out" / "model.tflite"
    synsets = f"--synsets={shared_data / 'metadata' / 'imagenette_synsets.txt'}"
    keras_report, litert_report = tmp_path / "keras_report", tmp_path / "litert_report"
    export = run_python([str(ROOT / "evaluate.py"), f"--checkpoint={workdir}", f"--data_dir={run.data_dir}",
         f"--export_litert={path}", f"--report_dir={keras_report}", synsets],
        timeout=600, cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    assert path.exists() and (tmp_path / "out" / "model.json").exists()
    assert (tmp_path / "out" / "model.labels.txt").read_text().splitlines()[0].startswith("tench")
    evaluate = run_python([str(ROOT / "evaluate.py"), f"--litert={path}", f"--data_dir={run.data_dir}",
         f"--report_dir={litert_report}", synsets],
        timeout=600, cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    expected = json.loads((keras_report / reports.REPORT_JSON).read_text())
    got = json.loads((litert_report / reports.REPORT_JSON).read_text())
    assert got["num_images"] == expected["num_images"] == len(run.val_images)
    for view in ("center_crop", "ten_crop"):
        assert abs(got[view]["top1_error"] - expected[view]["top1_error"]) <= 1 / got["num_images"] + 1e-9
    assert "tench, Tinca tinca" in (litert_report / reports.REPORT_MD).read_text()
    usage = run_python([str(ROOT / "evaluate.py"), f"--litert={path}",
                       f"--export_litert={tmp_path / 'again.tflite'}"],
                       timeout=300, cwd=tmp_path)
    assert usage.returncode != 0 and "--export_litert needs --checkpoint" in usage.stderr
    wrong = run_python([str(ROOT / "train.py"), f"--workdir={tmp_path / 'never'}",
                       "--export_litert=model.bin"], timeout=300, cwd=tmp_path)
    assert wrong.returncode != 0 and "name a .tflite file" in wrong.stderr
    assert not (tmp_path / "never").exists()
