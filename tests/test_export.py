"""The exported SavedModel: signatures, in-graph preprocessing, bad input, fresh-process serving."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import device_preprocess, export
from alexnet_tf import workdir as workdir_lib
from tests.support import ROOT, run_python

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
GRAYSCALE_JPEG = "imagenet-sample/train/n02692877/n02692877_airship.JPEG"  # mode L, 350x156
LARGE_JPEG = "imagenet-sample/train/n01440764/n01440764_tench.JPEG"


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def export_dir(exported_tiny_run):
    return exported_tiny_run


def _png(path, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def png_bomb(side: int) -> bytes:
    """A valid all-black grayscale PNG of side x side pixels, compressed to about side^2 / 1000 bytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_claiming(encoded: bytes, height: int, width: int) -> bytes:
    """A real JPEG whose frame header (SOF0/SOF2) is rewritten to declare height x width."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = encoded.find(marker)
        if at > 0:
            # marker(2) length(2) precision(1) height(2) width(2)
            return encoded[: at + 5] + struct.pack(">HH", height, width) + encoded[at + 9 :]
    raise AssertionError("no SOF marker found")


def _test_images(shared_data, run) -> dict[str, bytes]:
    return {
        "jpeg_224": run.val_images[0],
        "jpeg_large": (shared_data / LARGE_JPEG).read_bytes(),
        "jpeg_gray": (shared_data / GRAYSCALE_JPEG).read_bytes(),
        "png_rgb": _png(shared_data / LARGE_JPEG, "RGB"),
        "png_gray": _png(shared_data / GRAYSCALE_JPEG, "L"),
        "png_rgba": _png(io.BytesIO(run.val_images[1]), "RGBA"),
    }


def _python_path(run, encoded: bytes) -> np.ndarray:
    """Probabilities through the evaluation pipeline's centre crop and the Keras model."""
    image = device_preprocess.preprocess_for_eval(tf.constant(encoded), run.config, run.stats)
    return run.model(image[None], training=False).numpy()[0]



def test_png_bomb_generator_makes_decodable_pngs():
    image = tf.io.decode_png(png_bomb(64)).numpy()
    assert image.shape == (64, 64, 1) and not image.any()


def test_header_height_width_matches_decoded_size(shared_data, run):
    for name, encoded in _test_images(shared_data, run).items():
        declared = export.header_height_width(tf.constant(encoded)).numpy()
        decoded = tf.io.decode_image(encoded, expand_animations=False).shape[:2]
        assert tuple(declared) == tuple(decoded), name
    assert tuple(export.header_height_width(tf.constant(png_bomb(3000))).numpy()) == (3000, 3000)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Not a JPEG or PNG"):
        export.header_height_width(tf.constant(b"GIF89a" + b"\x00" * 30))


def test_checked_preprocess_refuses_too_many_pixels(shared_data, run):
    encoded = tf.constant((shared_data / LARGE_JPEG).read_bytes())
    allowed = export.checked_preprocess(encoded, run.config, run.stats)
    np.testing.assert_array_equal(allowed, device_preprocess.preprocess_for_eval(encoded, run.config, run.stats))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Image refused"):
        export.checked_preprocess(encoded, run.config, run.stats, max_pixels=100 * 100)


def test_signatures_and_outputs(export_dir, run):
    loaded = tf.saved_model.load(export_dir)
    assert set(loaded.signatures) == {export.SERVING_SIGNATURE, export.FLOAT_SIGNATURE}
    serving = loaded.signatures[export.SERVING_SIGNATURE]
    assert list(serving.structured_input_signature[1]) == [export.BYTES_INPUT]
    assert set(serving.structured_outputs) == {"classes", "wnids", "names", "probabilities"}
    floats = loaded.signatures[export.FLOAT_SIGNATURE]
    # The float signature adds the full softmax to the same top-k outputs.
    assert set(floats.structured_outputs) == {"prob", "classes", "wnids", "names", "probabilities"}
    spec = floats.structured_input_signature[1][export.FLOAT_INPUT]
    assert spec.shape.as_list() == [None, run.config.input_size, run.config.input_size, 3]
    assert export.load_config(export_dir) == run.config


def test_float_signature_gives_the_keras_models_probabilities(export_dir, run):
    predict, config = export.load_predictor(export_dir)
    images = tf.stack([device_preprocess.preprocess_for_eval(tf.constant(encoded), config, run.stats)
                       for encoded in run.val_images[:8]])
    np.testing.assert_allclose(predict(images).numpy(), run.model(images, training=False).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_no_xla_must_compile_functions(export_dir, tmp_path):
    assert export.xla_must_compile_functions(export_dir) == []
    # The check itself finds one when there is one.
    module = tf.Module()
    module.f = tf.function(lambda x: 2.0 * x, jit_compile=True, input_signature=[tf.TensorSpec([2], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "xla"))
    assert export.xla_must_compile_functions(str(tmp_path / "xla"))


FRESH_PROCESS = r"""
import base64, json, sys
import tensorflow as tf

export_dir, requests_file = sys.argv[1], sys.argv[2]
with open(requests_file) as f:
    requests = json.load(f)
serve = tf.saved_model.load(export_dir).signatures["serving_default"]
answers = []
for request in requests:
    batch = tf.constant([base64.b64decode(b) for b in request])
    try:
        out = serve(image_bytes=batch)
        answers.append({"classes": out["classes"].numpy().tolist(),
                        "probabilities": out["probabilities"].numpy().tolist(),
                        "wnids": [[w.decode() for w in row] for row in out["wnids"].numpy()],
                        "names": [[n.decode() for n in row] for row in out["names"].numpy()]})
    except tf.errors.InvalidArgumentError as e:
        answers.append({"error": e.message})
print(json.dumps({"answers": answers, "imported_alexnet_tf": any(m.startswith("alexnet_tf") for m in sys.modules)}))
"""


def _serve_in_a_fresh_process(export_dir: str, requests: list[list[bytes]], tmp_path) -> list:
    """The answers of ``serving_default`` to each request, from a process that imports only TensorFlow."""
    requests_file = tmp_path / "requests.json"
    requests_file.write_text(json.dumps([[base64.b64encode(b).decode() for b in r] for r in requests]))
    result = run_python(["-c", FRESH_PROCESS, export_dir, str(requests_file)],
                        timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert not output["imported_alexnet_tf"]
    return output["answers"]


@pytest.mark.slow
def test_serving_in_a_fresh_process(shared_data, run, export_dir, tmp_path):
    images = _test_images(shared_data, run)
    good = list(images.values())
    bomb = png_bomb(12_000)  # 144 megapixels in about 150 KB
    assert len(bomb) < 1_000_000
    requests = [
        good,
        [b"this is not an image"],
        [images["jpeg_224"]],  # the model still serves after the error
        [images["jpeg_224"][: len(images["jpeg_224"]) // 3]],  # a truncated JPEG
        [bomb],
        [jpeg_claiming(images["jpeg_224"], 60_000, 60_000)],
        [images["png_gray"], images["jpeg_gray"]],
    ]
    answers = _serve_in_a_fresh_process(export_dir, requests, tmp_path)

    first = answers[0]
    for i, (name, encoded) in enumerate(images.items()):
        expected = _python_path(run, encoded)
        top5 = np.argsort(-expected)[:5]
        assert first["classes"][i] == top5.tolist(), name
        np.testing.assert_allclose(first["probabilities"][i], expected[top5], rtol=1e-4, atol=1e-6, err_msg=name)
        assert first["wnids"][i] == [run.wnids[c] for c in top5]
        assert first["names"][i] == [run.names[c] for c in top5]
    assert "Not a JPEG or PNG" in answers[1]["error"]
    assert answers[2]["classes"][0] == first["classes"][0]
    assert "error" in answers[3]
    assert "Image refused" in answers[4]["error"] and "12000" in answers[4]["error"]
    assert "Image refused" in answers[5]["error"] and "60000" in answers[5]["error"]
    assert answers[6]["classes"] == [first["classes"][4], first["classes"][2]]


@pytest.mark.slow
def test_saved_model_cli_show_and_run(shared_data, run, export_dir, tmp_path):
    show = subprocess.run([SAVED_MODEL_CLI, "show", "--dir", export_dir, "--all"],
                          capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr[-3000:]
    for text in ("signature_def['serving_default']", "signature_def['serve_images']", "image_bytes",
                 "probabilities", "wnids"):
        assert text in show.stdout

    encoded = run.val_images[3]
    np.save(tmp_path / "bytes.npy", np.array([encoded], dtype=object), allow_pickle=True)
    cli = subprocess.run(
        [SAVED_MODEL_CLI, "run", "--dir", export_dir, "--tag_set", "serve", "--signature_def",
         "serving_default", "--inputs", f"image_bytes={tmp_path / 'bytes.npy'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    top5 = np.argsort(-_python_path(run, encoded))[:5]
    classes = cli.stdout.split("Result for output key classes:")[1].split("Result for")[0]
    assert [int(v) for v in classes.replace("[", " ").replace("]", " ").split()] == top5.tolist()


# The bfloat16 export: the same signatures, weights stored in bfloat16, the float32 export's answers.

# bfloat16 keeps 8 significant bits (relative rounding 2^-9 per weight and activation); through
# eight layers the softmax moves by a few thousandths on these models.
BFLOAT16_PROBABILITY_ATOL = 0.02
BFLOAT16_TOP1_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def bfloat16_export_dir(run, tmp_path_factory):
    return export.export_saved_model(run.model, str(tmp_path_factory.mktemp("bf16") / "1"), run.config, run.stats,
                                     run.wnids, run.names, precision="bfloat16")


def _graph_ops(export_dir: str) -> list:
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    return [node for meta_graph in saved.meta_graphs for function in meta_graph.graph_def.library.function
            for node in function.node_def]


def _variables_bytes(export_dir: str) -> int:
    folder = os.path.join(export_dir, "variables")
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def _real_validation_jpegs(shared_data) -> list[bytes]:
    return [path.read_bytes() for path in sorted((shared_data / "imagenet-sample" / "val").glob("*.JPEG"))]


@pytest.mark.onednn
def test_bfloat16_copy_stores_weights_in_bfloat16_and_outputs_float32(run):
    copy = export.bfloat16_copy(run.model)
    assert {weight.dtype for weight in copy.weights} == {"bfloat16"}
    assert len(copy.weights) == len(run.model.weights)
    for weight, copied in zip(run.model.weights, copy.weights, strict=True):
        np.testing.assert_array_equal(tf.cast(copied, tf.float32), tf.cast(tf.cast(weight, tf.bfloat16), tf.float32))
    assert copy.get_layer("prob").dtype_policy.name == "float32"
    images = tf.random.normal([2, run.config.input_size, run.config.input_size, 3], stddev=50.0, seed=1)
    assert copy(images).dtype == tf.float32
    # The original model is left as it was.
    assert {weight.dtype for weight in run.model.weights} == {"float32"}


def test_export_refuses_an_unknown_precision(run, tmp_path):
    with pytest.raises(ValueError, match="--export_precision"):
        export.export_saved_model(run.model, str(tmp_path / "1"), run.config, run.stats, run.wnids, run.names,
                                  precision="float16")


def test_bfloat16_export_signatures_weights_and_graph(export_dir, bfloat16_export_dir, run):
    loaded = tf.saved_model.load(bfloat16_export_dir)
    float32 = tf.saved_model.load(export_dir)
    assert set(loaded.signatures) == {export.SERVING_SIGNATURE, export.FLOAT_SIGNATURE}
    for name in loaded.signatures:
        signature, reference = loaded.signatures[name], float32.signatures[name]
        assert signature.structured_input_signature == reference.structured_input_signature, name
        assert {k: (v.dtype, v.shape.as_list()) for k, v in signature.structured_outputs.items()} == {
            k: (v.dtype, v.shape.as_list()) for k, v in reference.structured_outputs.items()}, name
    assert loaded.signatures[export.FLOAT_SIGNATURE].structured_outputs["prob"].dtype == tf.float32
    assert {v.dtype for v in loaded.variables if v.dtype.is_floating} == {tf.bfloat16}
    assert 0.4 < _variables_bytes(bfloat16_export_dir) / _variables_bytes(export_dir) < 0.6
    assert export.load_config(bfloat16_export_dir) == run.config.replace(export_precision="bfloat16")
    assert export.xla_must_compile_functions(bfloat16_export_dir) == []
    # The network runs in bfloat16, LRN in float32 (it has no bfloat16 CPU kernel).
    nodes = _graph_ops(bfloat16_export_dir)
    # A type attribute at its default (float32 for these ops) is left out of the saved graph.
    dtypes = {op: {node.attr["T"].type or tf.float32.as_datatype_enum for node in nodes if node.op == op}
              for op in ("Conv2D", "MatMul", "LRN")}
    assert dtypes == {"Conv2D": {tf.bfloat16.as_datatype_enum}, "MatMul": {tf.bfloat16.as_datatype_enum},
                      "LRN": {tf.float32.as_datatype_enum}}


@pytest.mark.onednn
def test_bfloat16_export_agrees_with_float32(shared_data, run, export_dir, bfloat16_export_dir):
    images = list(run.val_images) + _real_validation_jpegs(shared_data)
    outputs = {}
    for name, directory in (("float32", export_dir), ("bfloat16", bfloat16_export_dir)):
        serve = tf.saved_model.load(directory).signatures[export.SERVING_SIGNATURE]
        outputs[name] = [serve(image_bytes=tf.constant(images[i:i + 32])) for i in range(0, len(images), 32)]
    classes = {k: np.concatenate([o["classes"].numpy() for o in v]) for k, v in outputs.items()}
    probabilities = {k: np.concatenate([o["probabilities"].numpy() for o in v]) for k, v in outputs.items()}
    assert len(classes["float32"]) == len(images) == len(run.val_images) + 100
    agreement = np.mean(classes["float32"][:, 0] == classes["bfloat16"][:, 0])
    assert agreement >= BFLOAT16_TOP1_AGREEMENT, agreement
    np.testing.assert_allclose(probabilities["bfloat16"], probabilities["float32"], atol=BFLOAT16_PROBABILITY_ATOL)
    # Not the same export twice: the answers differ by bfloat16 rounding.
    assert not np.array_equal(probabilities["bfloat16"], probabilities["float32"])


def _invalid_images(images: dict[str, bytes]) -> dict[str, bytes]:
    jpeg = images["jpeg_224"]
    return {
        "random_bytes": np.random.default_rng(0).bytes(3000),
        "truncated_jpeg": jpeg[: len(jpeg) // 3],
        "png_bomb": png_bomb(12_000),
        "jpeg_claiming_60000": jpeg_claiming(jpeg, 60_000, 60_000),
    }


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_serving_from_threads_answers_each_request_as_alone(shared_data, run, export_dir, bfloat16_export_dir,
                                                            precision):
    from concurrent.futures import ThreadPoolExecutor

    serve = tf.saved_model.load(export_dir if precision == "float32" else bfloat16_export_dir).signatures[
        export.SERVING_SIGNATURE]
    images = _test_images(shared_data, run)
    valid, invalid = list(images.values()), list(_invalid_images(images).values())
    expected = [serve(image_bytes=tf.constant([encoded]))["classes"].numpy()[0].tolist() for encoded in valid]
    for encoded in invalid:
        with pytest.raises(tf.errors.InvalidArgumentError):
            serve(image_bytes=tf.constant([encoded]))
    threads, per_thread = 4, 15
    # Every third request is invalid; each thread starts at a different place in the mix.
    plan = [[("invalid", (t + r) % len(invalid)) if (t + r) % 3 == 2 else ("valid", (t + r) % len(valid))
             for r in range(per_thread)] for t in range(threads)]

    def worker(requests):
        answers = []
        for kind, index in requests:
            encoded = valid[index] if kind == "valid" else invalid[index]
            try:
                answers.append(serve(image_bytes=tf.constant([encoded]))["classes"].numpy()[0].tolist())
            except tf.errors.InvalidArgumentError:
                answers.append("InvalidArgumentError")
        return answers

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(worker, requests) for requests in plan]
        answers = [future.result(timeout=600) for future in futures]
    for requests, got in zip(plan, answers, strict=True):
        assert got == [expected[i] if kind == "valid" else "InvalidArgumentError" for kind, i in requests]
    assert sum(kind == "invalid" for requests in plan for kind, _ in requests) == 20


@pytest.mark.slow
def test_bfloat16_export_serves_in_a_fresh_process(shared_data, run, bfloat16_export_dir, tmp_path):
    images = _test_images(shared_data, run)
    requests = [list(images.values()), [b"this is not an image"], [png_bomb(12_000)], [images["png_gray"]]]
    answers = _serve_in_a_fresh_process(bfloat16_export_dir, requests, tmp_path)
    here = tf.saved_model.load(bfloat16_export_dir).signatures[export.SERVING_SIGNATURE](
        image_bytes=tf.constant(requests[0]))
    assert answers[0]["classes"] == here["classes"].numpy().tolist()
    np.testing.assert_allclose(answers[0]["probabilities"], here["probabilities"].numpy(), atol=1e-3)
    assert answers[0]["wnids"][0] == [run.wnids[c] for c in answers[0]["classes"][0]]
    assert "Not a JPEG or PNG" in answers[1]["error"]
    assert "Image refused" in answers[2]["error"]
    assert answers[3]["classes"] == [answers[0]["classes"][4]]


@pytest.mark.slow
def test_command_lines_export_in_bfloat16(run, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / workdir_lib.CONFIG_FILE).write_text(run.config.to_json())
    run.model.save(workdir / workdir_lib.MODEL_FILE)
    export_dir = tmp_path / "export" / "1"
    command = [str(ROOT / "evaluate.py"), f"--checkpoint={workdir}", f"--data_dir={run.data_dir}",
               f"--export_dir={export_dir}", "--export_precision=bfloat16", "--ten_crop=false"]
    result = run_python(command, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert export.load_config(str(export_dir)).export_precision == "bfloat16"
    loaded = tf.saved_model.load(str(export_dir))
    assert {v.dtype for v in loaded.variables if v.dtype.is_floating} == {tf.bfloat16}
    wrong = run_python([str(ROOT / "train.py"), f"--workdir={tmp_path / 'never'}",
                       "--export_precision=float16"], timeout=300, cwd=tmp_path)
    assert wrong.returncode != 0 and "--export_precision='float16'" in wrong.stderr
    assert not (tmp_path / "never").exists()


@pytest.mark.onednn
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_run_exports_a_float32_graph(run, tmp_path, policy):
    """The float32 export of a model built under a mixed policy computes in float32, like the float32 model."""
    import keras

    from alexnet_tf import model as model_lib

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed = model_lib.build_from_config(run.config.replace(precision=policy))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    mixed.set_weights(run.model.get_weights())
    assert not export.computes_in_float32(mixed)
    directory = export.export_saved_model(mixed, str(tmp_path / "1"), run.config.replace(precision=policy),
                                          run.stats, run.wnids, run.names)
    nodes = _graph_ops(directory)
    # A type attribute at its default (float32 for these ops) is left out of the saved graph.
    dtypes = {node.attr["T"].type or tf.float32.as_datatype_enum for node in nodes if node.op in ("Conv2D", "MatMul")}
    assert dtypes == {tf.float32.as_datatype_enum}, dtypes
    images = tf.random.normal([4, run.config.input_size, run.config.input_size, 3], stddev=50.0, seed=2)
    served = tf.saved_model.load(directory).signatures[export.FLOAT_SIGNATURE](**{export.FLOAT_INPUT: images})
    np.testing.assert_allclose(served["prob"].numpy(), run.model(images, training=False).numpy(), atol=1e-5)
    # The mixed model itself does compute in half precision: the export is not trivially equal.
    assert not np.allclose(mixed(images, training=False).numpy(), run.model(images, training=False).numpy(),
                           atol=1e-5, rtol=0)
