"""The serving exports under load: float32 and bfloat16 SavedModels and the int8 LiteRT file.

The full-size network (random weights: the cost does not depend on them) is exported twice, with
``precision="float32"`` and ``"bfloat16"``, and once as a LiteRT file with int8 weights
(``litert.export_litert``, dynamic-range quantisation). Then, each in its own process that imports
only TensorFlow and the LiteRT runtime:

* timing: all exports loaded side by side, their calls alternated round by round so that all
  see the same machine load: ``serving_default`` (JPEG bytes in) at batch 1 (p50, p99) and at
  batch 32 (images/s), and ``serve_images`` (preprocessed crops, the network alone) the same way;
  the LiteRT file (``--litert_threads`` threads, XNNPACK as the runtime applies it by default, and
  once more without XNNPACK, the runtime's builtin kernels) on the same crops plus the mean it
  subtracts inside, so its network sees the same values;
* memory, once per export: the peak resident memory (VmHWM) after loading it, after batch-1 calls
  and after batch-32 calls of the network alone; the SavedModels in a TensorFlow process, the
  LiteRT file in one that imports only numpy and the runtime (all a LiteRT server needs);
* load, once per export: ``serving_default`` driven from ``--threads`` threads, ``--requests``
  requests each, a mix of valid JPEG and PNG files of many sizes and invalid ones (random bytes,
  a truncated JPEG, an empty string, a PNG decompression bomb, a JPEG whose header claims
  60000x60000). Every valid answer must equal the single-threaded answer for the same file, every
  invalid request must fail with ``InvalidArgumentError``, and no thread may run past
  ``--timeout``. Prints p50/p99 latency, images/s and the process's peak memory (VmHWM) at the
  start and the end of the run.

The last line is one JSON object; ``bf16_vs_f32_batch1_p50`` (goal <= 0.75) and
``bf16_vs_f32_batch32_throughput`` (goal >= 1.5) are the ``serving_default`` ratios, and
``litert_vs_f32_network_batch1_p50`` (goal <= 0.6) is the LiteRT file against the float32
SavedModel's ``serve_images`` on the same crops in the same run.

  python benchmarks/serving.py [--shared_data=../shared/data] [--threads=4] [--requests=200]
  python benchmarks/serving.py --compare=F32_EXPORT,BF16_EXPORT   # agreement on the 100 real validation images
  python benchmarks/serving.py --compare_litert=F32_EXPORT,MODEL.tflite --data_dir=RECORDS
      # per-image top-1 agreement and top-1/top-5 error of both, centre crop and 10 crops, by the evaluator
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, TimeoutError

import harness
import numpy as np
import tensorflow as tf
from absl import app, flags

flags.DEFINE_string("shared_data", str(harness.SHARED_DATA), "The real test data (imagenet-sample/).")
flags.DEFINE_integer("threads", 4, "Load test: concurrent callers.")
flags.DEFINE_integer("requests", 200, "Load test: requests per caller.")
flags.DEFINE_integer("timeout", 1800, "Load test: seconds a caller may take for all its requests.")
flags.DEFINE_integer("calls", 40, "Timing: batch-1 calls per precision and round.")
flags.DEFINE_integer("batch32_calls", 3, "Timing: batch-32 calls per precision and round.")
flags.DEFINE_integer("rounds", 2, "Timing: alternating rounds.")
flags.DEFINE_string("compare", None, "F32_EXPORT,BF16_EXPORT: compare two exports' answers, then stop.")
flags.DEFINE_integer("litert_threads", 2, "Threads of the LiteRT runtime.")
flags.DEFINE_integer("memory_calls", 5, "Memory: calls per batch size.")
flags.DEFINE_string("compare_litert", None, "F32_EXPORT,MODEL.tflite: compare a SavedModel and a LiteRT file on "
                    "--data_dir's validation records, then stop.")
flags.DEFINE_string("data_dir", None, "With --compare_litert: the converted records (validation-* shards).")
flags.DEFINE_string("role", None, "Internal: timing, memory or load, run in the child process.")
flags.DEFINE_string("exports", None, "Internal: the child's export directories, comma separated.")
flags.DEFINE_string("payloads", None, "Internal: the child's request payloads (a pickle).")
flags.DEFINE_string("litert", None, "Internal: the child's LiteRT file.")
FLAGS = flags.FLAGS
SIGNATURE = "serving_default"
PRECISIONS = ("float32", "bfloat16")
LITERT = "litert"  # with XNNPACK, the runtime's default
LITERT_BUILTIN = "litert-builtin"  # the runtime's own kernels, no delegate
WARMUP = 3


# ---------------------------------------------------------------- measured in the child process


def _memory_mib() -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of this process, in MiB."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = round(int(rest.split()[0]) / 1024, 1)
    return values


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def _timed(function, argument) -> float:
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, function(argument))
    return time.perf_counter() - start


def _litert_runner(path: str, delegates: bool):
    """``crops -> prob`` through the LiteRT file in the ``ai-edge-litert`` runtime (not alexnet_tf)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_path=path, num_threads=FLAGS.litert_threads,
                              experimental_op_resolver_type=resolver)
    runner = interpreter.get_signature_runner("serving_default")
    run = lambda images: runner(image=images)["prob"]  # noqa: E731
    run.interpreter = interpreter
    return run


def _timing(exports: list[str], payloads: dict) -> dict:
    """Alternates the exports round by round: batch 1 and batch 32, bytes and crops."""
    loaded = {p: tf.saved_model.load(d) for p, d in zip(PRECISIONS, exports, strict=True)}
    valid = payloads["timing"]
    size = payloads["input_size"]
    singles = [tf.constant([valid[i % len(valid)]]) for i in range(FLAGS.calls)]
    batches = [tf.constant([valid[(32 * b + i) % len(valid)] for i in range(32)]) for b in range(FLAGS.batch32_calls)]
    crops1 = tf.random.normal([1, size, size, 3], stddev=50.0, seed=1)
    crops32 = tf.random.normal([32, size, size, 3], stddev=50.0, seed=2)
    calls = {}
    if FLAGS.litert:
        # The file subtracts the mean itself: it gets the crops plus the mean, its network the same values.
        mean = np.asarray(payloads["litert_mean"], np.float32)
        pixels1, pixels32 = crops1.numpy() + mean, crops32.numpy() + mean
        for name, delegates in ((LITERT, True), (LITERT_BUILTIN, False)):
            run = _litert_runner(FLAGS.litert, delegates)
            calls[name] = {"crops_batch1": (run, [pixels1] * FLAGS.calls),
                           "crops_batch32": (run, [pixels32] * FLAGS.batch32_calls)}
            for function, arguments in calls[name].values():
                for argument in arguments[:WARMUP]:
                    function(argument)
    for precision, model in loaded.items():
        serve, floats = model.signatures[SIGNATURE], model.signatures["serve_images"]
        calls[precision] = {
            "bytes_batch1": (lambda b, s=serve: s(image_bytes=b), singles),
            "bytes_batch32": (lambda b, s=serve: s(image_bytes=b), batches),
            "crops_batch1": (lambda x, f=floats: f(image=x), [crops1] * FLAGS.calls),
            "crops_batch32": (lambda x, f=floats: f(image=x), [crops32] * FLAGS.batch32_calls),
        }
        for function, arguments in calls[precision].values():
            for argument in arguments[:WARMUP]:
                function(argument)
    seconds = {p: {k: [] for k in calls[p]} for p in calls}
    for _ in range(FLAGS.rounds):
        for key in calls["float32"]:
            for precision in calls:
                if key in calls[precision]:
                    function, arguments = calls[precision][key]
                    seconds[precision][key] += [_timed(function, a) for a in arguments]
    results = {}
    for precision in calls:
        for key, values in seconds[precision].items():
            batch = 32 if key.endswith("32") else 1
            results[f"{precision}_{key}"] = {**_percentiles(values),
                                             "images_per_second": round(batch * len(values) / sum(values), 1)}
    return results


def _load_test(export_dir: str, payloads: dict) -> dict:
    """``--threads`` callers, ``--requests`` each, valid and invalid files mixed."""
    memory_loaded = _memory_mib()
    serve = tf.saved_model.load(export_dir).signatures[SIGNATURE]
    memory_after_load = _memory_mib()
    valid, invalid = payloads["valid"], payloads["invalid"]

    def answer(encoded: bytes) -> tuple[list[int], list[float]] | str:
        try:
            out = serve(image_bytes=tf.constant([encoded]))
        except tf.errors.InvalidArgumentError:
            return "InvalidArgumentError"
        return out["classes"].numpy()[0].tolist(), out["probabilities"].numpy()[0].tolist()

    expected = [answer(encoded) for encoded in valid]
    invalid_answers = [answer(encoded) for encoded in invalid]
    memory_start = _memory_mib()
    # One request in four is invalid; every caller walks the files from its own starting point.
    plan = [[("invalid", (t + r) // 4 % len(invalid)) if (t + r) % 4 == 3 else ("valid", (7 * t + r) % len(valid))
             for r in range(FLAGS.requests)] for t in range(FLAGS.threads)]
    midway = {}

    def caller(index: int) -> list[tuple[str, int, object, float]]:
        log = []
        for number, (kind, item) in enumerate(plan[index]):
            start = time.perf_counter()
            got = answer(valid[item] if kind == "valid" else invalid[item])
            log.append((kind, item, got, time.perf_counter() - start))
            if index == 0 and number == len(plan[0]) // 2:
                midway.update(_memory_mib())
        return log

    start = time.perf_counter()
    hung = 0
    logs = []
    with ThreadPoolExecutor(FLAGS.threads) as pool:
        futures = [pool.submit(caller, t) for t in range(FLAGS.threads)]
        deadline = start + FLAGS.timeout
        for future in futures:
            try:
                logs.append(future.result(timeout=max(0.0, deadline - time.perf_counter())))
            except TimeoutError:
                hung += 1
        if hung:
            # A caller is stuck inside TensorFlow and cannot be interrupted: report and leave.
            print(json.dumps({"hung_callers": hung}), flush=True)
            os._exit(3)
    elapsed = time.perf_counter() - start
    memory_end = _memory_mib()
    entries = [entry for log in logs for entry in log]
    answered = [(got, expected[item]) for kind, item, got, _ in entries if kind == "valid"]
    wrong_answers = sum(got == "InvalidArgumentError" or got[0] != alone[0] for got, alone in answered)
    probability_diff = max((float(np.abs(np.subtract(got[1], alone[1])).max()) for got, alone in answered
                            if got != "InvalidArgumentError"), default=0.0)
    not_refused = sum(1 for kind, _, got, _ in entries if kind == "invalid" and got != "InvalidArgumentError")
    valid_seconds = [s for kind, _, _, s in entries if kind == "valid"]
    return {
        "requests": len(entries),
        "valid_requests": len(valid_seconds),
        "invalid_requests": len(entries) - len(valid_seconds),
        "wrong_answers": wrong_answers,
        "max_probability_diff_from_single_threaded": probability_diff,
        "invalid_not_refused": not_refused,
        "single_threaded_invalid_not_refused": sum(a != "InvalidArgumentError" for a in invalid_answers),
        "single_threaded_valid_refused": sum(a == "InvalidArgumentError" for a in expected),
        "hung_callers": hung,
        **_percentiles(valid_seconds),
        "max_ms": round(1000 * max(s for _, _, _, s in entries), 1),
        "valid_images_per_second": round(len(valid_seconds) / elapsed, 1),
        "seconds": round(elapsed, 1),
        "memory_mib": {"before_load": memory_loaded, "after_load": memory_after_load, "start": memory_start,
                       "midway": midway, "end": memory_end},
    }


def _memory(export: str, payloads: dict) -> dict:
    """Peak resident memory of this TensorFlow process after loading ``export`` and after calls of its network."""
    size = payloads["input_size"]
    before = _memory_mib()
    floats = tf.saved_model.load(export).signatures["serve_images"]
    result = {"before_load": before, "after_load": _memory_mib()}
    for batch in (1, 32):
        crops = tf.random.normal([batch, size, size, 3], stddev=50.0, seed=batch)
        for _ in range(FLAGS.memory_calls):
            floats(image=crops)["prob"].numpy()
        result[f"after_batch{batch}"] = _memory_mib()
    return result


# The LiteRT file's memory, in a process that imports only what serving it needs: numpy and the runtime.
LITERT_MEMORY = """
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter

def memory():
    with open("/proc/self/status", encoding="ascii") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmHWM", "VmRSS")}

path, size, threads, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
result = {"before_load": memory()}
runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner("serving_default")
result["after_load"] = memory()
for batch in (1, 32):
    crops = np.random.default_rng(batch).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    for _ in range(calls):
        runner(image=crops)
    result[f"after_batch{batch}"] = memory()
result["imported_tensorflow"] = "tensorflow" in sys.modules
print(json.dumps(result))
"""


def _litert_memory(path: str, input_size: int) -> dict:
    command = [sys.executable, "-c", LITERT_MEMORY, path, str(input_size), str(FLAGS.litert_threads),
               str(FLAGS.memory_calls)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=FLAGS.timeout)
    if result.returncode != 0:
        raise RuntimeError(f"LiteRT memory child failed ({result.returncode}): {result.stderr[-3000:]}")
    output = json.loads(result.stdout.strip().splitlines()[-1])
    if output.pop("imported_tensorflow"):
        raise RuntimeError("the LiteRT memory child imported TensorFlow: it must run on the LiteRT runtime alone")
    return output


def _child() -> None:
    with open(FLAGS.payloads, "rb") as f:
        payloads = pickle.load(f)
    exports = FLAGS.exports.split(",")
    if FLAGS.role == "timing":
        result = _timing(exports, payloads)
    elif FLAGS.role == "memory":
        result = _memory(exports[0], payloads)
    else:
        result = _load_test(exports[0], payloads)
    result["imported_alexnet_tf"] = any(name.startswith("alexnet_tf") for name in sys.modules)
    print(json.dumps(result), flush=True)


def _compare(f32_dir: str, bf16_dir: str) -> dict:
    """Top-1 agreement and top-5 probability differences on the 100 real validation JPEGs."""
    val = pathlib.Path(FLAGS.shared_data) / "imagenet-sample" / "val"
    images = [p.read_bytes() for p in sorted(val.glob("*.JPEG"))]
    outputs = {}
    for precision, directory in zip(PRECISIONS, (f32_dir, bf16_dir), strict=True):
        serve = tf.saved_model.load(directory).signatures[SIGNATURE]
        parts = [serve(image_bytes=tf.constant(images[i:i + 25])) for i in range(0, len(images), 25)]
        outputs[precision] = {k: np.concatenate([p[k].numpy() for p in parts]) for k in ("classes", "probabilities")}
    f32, bf16 = outputs["float32"], outputs["bfloat16"]
    differ = np.flatnonzero(f32["classes"][:, 0] != bf16["classes"][:, 0])
    return {
        # How close float32's own first and second choices were where the two disagree.
        "disagreements_float32_margin": [round(float(m), 4) for m in
                                         f32["probabilities"][differ, 0] - f32["probabilities"][differ, 1]],
        "images": len(images),
        "top1_agreement": float(np.mean(f32["classes"][:, 0] == bf16["classes"][:, 0])),
        "top5_same_set": float(np.mean([set(a) == set(b) for a, b in zip(f32["classes"], bf16["classes"])])),
        "top5_probability_max_abs_diff": round(float(np.abs(f32["probabilities"] - bf16["probabilities"]).max()), 5),
        "top5_probability_mean_abs_diff": round(float(np.abs(f32["probabilities"] - bf16["probabilities"]).mean()), 6),
    }


def _compare_litert(saved_model: str, litert_file: str, data_dir: str) -> dict:
    """Both exports through the evaluator's views: per-image top-1 agreement, and each one's errors."""
    from alexnet_tf import device_preprocess, evaluation, export, litert
    from alexnet_tf import metrics as metrics_lib

    predict_f32, config = export.load_predictor(saved_model)
    predict_litert, litert_config, stats = litert.load_predictor(litert_file)
    if litert_config != config:
        raise ValueError(f"{saved_model} and {litert_file} were exported from different configurations")
    result: dict = {"data_dir": data_dir, "litert_file_mb": round(os.path.getsize(litert_file) / 1e6, 1)}
    finish = device_preprocess.DeviceFinish(config, stats)
    for view, (dataset, ten_crop) in evaluation.view_datasets(config, data_dir, stats).items():
        tops = {}
        for name, predict in (("float32", predict_f32), ("litert", predict_litert)):
            top_k, labels, seconds = evaluation.predict_top_k(predict, dataset, config.num_classes, ten_crop,
                                                              progress=False, finish=finish)
            tops[name] = top_k
            metrics = metrics_lib.summarize(top_k, labels, config.num_classes)
            result[f"{name}_{view}"] = {"top1_error": round(metrics["top1_error"], 4),
                                        "top5_error": round(metrics["top5_error"], 4), "seconds": round(seconds, 1)}
        result[f"{view}_top1_agreement"] = round(float(np.mean(tops["float32"][:, 0] == tops["litert"][:, 0])), 4)
        result[f"{view}_top1_error_difference_points"] = round(
            100 * (result[f"litert_{view}"]["top1_error"] - result[f"float32_{view}"]["top1_error"]), 2)
        result["images"] = len(labels)
    return result


# ---------------------------------------------------------------- prepared in the parent process


def _tree_megabytes(directory: str) -> float:
    return sum(p.stat().st_size for p in pathlib.Path(directory).rglob("*") if p.is_file()) / 1e6


def _png(image, mode: str) -> bytes:
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def _png_bomb(side: int) -> bytes:
    """A valid black side x side grayscale PNG of about side^2 / 1000 bytes."""
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(b"\x00" * (side + 1)) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _claiming(jpeg: bytes, height: int, width: int) -> bytes:
    at = jpeg.find(b"\xff\xc0")
    if at < 0:
        at = jpeg.find(b"\xff\xc2")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def _payloads(shared_data: pathlib.Path, input_size: int) -> dict:
    """Valid files of many sizes (JPEG and PNG; RGB, grayscale, RGBA) and invalid ones."""
    from PIL import Image

    val = [p.read_bytes() for p in sorted((shared_data / "imagenet-sample" / "val").glob("*.JPEG"))]
    train = sorted((shared_data / "imagenet-sample" / "train").glob("*/*.JPEG"))
    by_size = sorted(train, key=lambda p: Image.open(p).size[0] * Image.open(p).size[1])
    # The 6 smallest, 6 largest and 8 between of the 1000 training originals: 68x56 to 2400x1632.
    picked = by_size[:6] + by_size[-6:] + by_size[100::110][:8]
    valid = val[:20] + [p.read_bytes() for p in picked]
    for path, mode in ((by_size[0], "RGB"), (by_size[500], "L"), (by_size[-1], "RGB"), (by_size[300], "RGBA")):
        valid.append(_png(Image.open(path), mode))
    invalid = [np.random.default_rng(0).bytes(5000), val[0][: len(val[0]) // 3], b"", _png_bomb(12_000),
               _claiming(val[1], 60_000, 60_000)]
    return {"valid": valid, "invalid": invalid, "timing": val, "input_size": input_size}


def _run_child(role: str, exports: list[str], payloads_file: str, litert_file: str | None = None) -> dict:
    passed_on = ("threads", "requests", "timeout", "calls", "batch32_calls", "rounds", "litert_threads",
                 "memory_calls")
    command = [sys.executable, __file__, f"--role={role}", f"--exports={','.join(exports)}",
               f"--payloads={payloads_file}"] + [f"--{name}={FLAGS[name].value}" for name in passed_on]
    if litert_file:
        command.append(f"--litert={litert_file}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=FLAGS.timeout + 600)
    if result.returncode != 0:
        raise RuntimeError(f"{role} child failed ({result.returncode}): {result.stdout[-2000:]} "
                           f"{result.stderr[-3000:]}")
    output = json.loads(result.stdout.strip().splitlines()[-1])
    if output.pop("imported_alexnet_tf"):
        raise RuntimeError(f"the {role} child imported alexnet_tf: it must load the export with TensorFlow alone")
    return output


def main(argv: list[str]) -> None:
    del argv
    tf.get_logger().setLevel("ERROR")
    if FLAGS.role:
        _child()
        return
    if FLAGS.compare_litert:
        if not FLAGS.data_dir:
            raise app.UsageError("--compare_litert needs --data_dir, the converted records to evaluate on")
        result = _compare_litert(*FLAGS.compare_litert.split(","), FLAGS.data_dir)
        for view in ("center_crop", "ten_crop"):
            print(f"{view}: top-1 agreement {result[f'{view}_top1_agreement']:.2%} on {result['images']} images; "
                  f"top-1 error float32 {result[f'float32_{view}']['top1_error']:.2%}, LiteRT "
                  f"{result[f'litert_{view}']['top1_error']:.2%}; top-5 error float32 "
                  f"{result[f'float32_{view}']['top5_error']:.2%}, LiteRT {result[f'litert_{view}']['top5_error']:.2%}")
        print(json.dumps(result))
        return
    if FLAGS.compare:
        result = _compare(*FLAGS.compare.split(","))
        print(f"{result['images']} real validation images: top-1 agreement {result['top1_agreement']:.2%}, same "
              f"top-5 set {result['top5_same_set']:.2%}, top-5 probabilities differ by at most "
              f"{result['top5_probability_max_abs_diff']} (mean {result['top5_probability_mean_abs_diff']}); "
              f"float32's top-1 margin where they disagree: {result['disagreements_float32_margin']}")
        print(json.dumps(result))
        return

    from alexnet_tf import export, imagenet, litert
    from alexnet_tf.config import get_config
    from alexnet_tf.model import build_from_config
    from alexnet_tf.statistics import imagenet_statistics

    print(f"load average at start: {os.getloadavg()}")
    config = get_config("paper", mean_subtraction="channel")
    model = build_from_config(config, seed=0)
    results: dict = {}
    with tempfile.TemporaryDirectory() as work:
        exports = [export.export_saved_model(model, os.path.join(work, precision, "1"), config, imagenet_statistics(),
                                             imagenet.load_synsets(), imagenet.class_names(), precision=precision)
                   for precision in PRECISIONS]
        litert_file = litert.export_litert(model, os.path.join(work, "litert", "alexnet.tflite"), config,
                                           imagenet_statistics(), imagenet.load_synsets(), imagenet.class_names())
        litert_mean = litert.mean_window(config, imagenet_statistics())
        print(f"LiteRT file (int8 weights): {os.path.getsize(litert_file) / 1e6:.1f} MB; float32 SavedModel "
              f"variables: {_tree_megabytes(os.path.join(exports[0], 'variables')):.1f} MB")
        del model
        payloads_file = os.path.join(work, "payloads.pickle")
        payloads = _payloads(pathlib.Path(FLAGS.shared_data), config.input_size)
        payloads["litert_mean"] = litert_mean.tolist()
        with open(payloads_file, "wb") as f:
            pickle.dump(payloads, f)
        print(f"{len(payloads['valid'])} valid files ({min(map(len, payloads['valid']))} to "
              f"{max(map(len, payloads['valid']))} bytes), {len(payloads['invalid'])} invalid ones")

        timing = _run_child("timing", exports, payloads_file, litert_file)
        print("| precision | call | p50 ms | p99 ms | images/s |")
        print("|---|---|---|---|---|")
        for key, figures in timing.items():
            precision, call = key.split("_", 1)
            print(f"| {precision} | {call} | {figures['p50_ms']} | {figures['p99_ms']} | "
                  f"{figures['images_per_second']} |")
        results["timing"] = timing
        for call, prefix in (("bytes", "bf16_vs_f32"), ("crops", "bf16_vs_f32_network")):
            bf16, f32 = timing[f"bfloat16_{call}_batch1"], timing[f"float32_{call}_batch1"]
            results[f"{prefix}_batch1_p50"] = round(bf16["p50_ms"] / f32["p50_ms"], 3)
            bf16, f32 = timing[f"bfloat16_{call}_batch32"], timing[f"float32_{call}_batch32"]
            results[f"{prefix}_batch32_throughput"] = round(bf16["images_per_second"] / f32["images_per_second"], 3)
        for name, prefix in ((LITERT, "litert_vs_f32_network"), (LITERT_BUILTIN, "litert_builtin_vs_f32_network")):
            f32 = timing["float32_crops_batch1"]
            results[f"{prefix}_batch1_p50"] = round(timing[f"{name}_crops_batch1"]["p50_ms"] / f32["p50_ms"], 3)
            f32 = timing["float32_crops_batch32"]
            results[f"{prefix}_batch32_throughput"] = round(
                timing[f"{name}_crops_batch32"]["images_per_second"] / f32["images_per_second"], 3)

        print("| export (process) | peak MiB before load | after load | after batch 1 | after batch 32 |")
        print("|---|---|---|---|---|")
        for name, path in zip((*PRECISIONS, LITERT), (*exports, litert_file), strict=True):
            memory = (_litert_memory(path, config.input_size) if name == LITERT
                      else _run_child("memory", [path], payloads_file))
            process = "numpy and ai-edge-litert" if name == LITERT else "TensorFlow"
            print(f"| {name} ({process}) | {memory['before_load']['VmHWM']} | {memory['after_load']['VmHWM']} | "
                  f"{memory['after_batch1']['VmHWM']} | "
                  f"{memory['after_batch32']['VmHWM']} |")
            results[f"{name}_memory_mib"] = memory

        for precision, export_dir in zip(PRECISIONS, exports, strict=True):
            load = _run_child("load", [export_dir], payloads_file)
            memory = load["memory_mib"]
            print(f"{precision} under load: {load['requests']} requests from {FLAGS.threads} threads "
                  f"({load['invalid_requests']} invalid) in {load['seconds']} s; wrong answers "
                  f"{load['wrong_answers']}, invalid not refused {load['invalid_not_refused']}, hung callers "
                  f"{load['hung_callers']}; p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, max {load['max_ms']} ms, "
                  f"{load['valid_images_per_second']} images/s; peak memory {memory['start']['VmHWM']} MiB at the "
                  f"start, {memory['midway'].get('VmHWM')} midway, {memory['end']['VmHWM']} at the end "
                  f"(resident {memory['start']['VmRSS']} -> {memory['end']['VmRSS']} MiB)")
            results[f"{precision}_load"] = load
        results["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    harness.print_figures(results)


if __name__ == "__main__":
    harness.run(main)
