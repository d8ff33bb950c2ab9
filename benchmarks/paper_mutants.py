"""Mutation suite: small, plausible deviations from the paper, each of which a test must catch.

Each mutant replaces one exact snippet of one file with a deviation a careful reader might make
(Caffe's layer order, non-overlapping pooling, alpha divided by n, ...). The script copies the
repository's git-tracked files to a temporary directory (with ``../shared`` linked beside it, so
tests find the real data), runs the named tests once on the unmutated copy (they must pass), then
for each mutant applies it alone, runs its tests with ``python -m pytest -x -q`` and restores the
file. A mutant is *killed* when its tests fail, *survived* when they pass; a snippet that is not
found exactly once, a test that fails on the unmutated copy, or tests that cannot even be
collected with the mutant applied, is an *error*, never a kill.

    python benchmarks/paper_mutants.py                  # every mutant
    python benchmarks/paper_mutants.py --only=pool_2x2  # one mutant (repeat for more)
    python benchmarks/paper_mutants.py --list           # names, files and tests
    python benchmarks/paper_mutants.py --table=mutants.md

Prints one line per mutant and a Markdown table (also written to ``--table``). Last line: one
JSON object ``{"mutants": N, "killed": K, "survived": [names], "errors": [names]}``.

The tests run with ``CI=1``, so a test that needs ``../shared/data`` fails rather than skips when
the data is missing (a skip would look like a surviving mutant).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

import harness
from absl import flags

ROOT = harness.ROOT
flags.DEFINE_multi_string("only", None, "Run only this mutant (repeatable).")
flags.DEFINE_bool("list", False, "List the mutants and exit.")
flags.DEFINE_string("table", "paper_mutants.md", "Where to write the Markdown table.")
FLAGS = flags.FLAGS
TIMEOUT_SECONDS = 900  # per pytest run; a mutant that hangs the tests counts as killed (by timeout)


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One deviation: ``old`` (found exactly once in ``path``) becomes ``new``; ``tests`` must fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str
    note: str = ""  # why it may survive today, for mutants whose killing test lives on another branch


M = "tests/test_model.py::"
P = "tests/test_preprocess.py::"

# One list, easy to edit: when code moves, re-point ``path`` and ``old`` (a snippet that is not
# found is reported as an error, never as a kill).
MUTANTS: list[Mutant] = [
    Mutant("lrn1_after_pool1", "alexnet_tf/model.py",
           'x = pool(normalise(x, "lrn1"), "pool1")',
           'x = normalise(pool(x, "pool1"), "lrn1")',
           (M + "test_paper_layer_order",),
           "LRN after the pooling in layer 1 (Caffe's order, not the paper's)"),
    Mutant("lrn2_after_pool2", "alexnet_tf/model.py",
           'x = pool(normalise(x, "lrn2"), "pool2")',
           'x = normalise(pool(x, "pool2"), "lrn2")',
           (M + "test_paper_layer_order",),
           "LRN after the pooling in layer 2"),
    Mutant("pool_2x2", "alexnet_tf/model.py",
           "POOL_SIZE = 3",
           "POOL_SIZE = 2",
           (M + "test_pooling_is_overlapping_3x3_stride_2",),
           "non-overlapping 2x2/2 pooling instead of 3x3/2 (same shapes)"),
    Mutant("no_dropout_after_fc6", "alexnet_tf/model.py",
           'x = ReplicaDropout(dropout, name=f"dropout{index}")(x)',
           'x = ReplicaDropout(dropout, name=f"dropout{index}")(x) if index == 7 else x',
           (M + "test_dropout_half_after_fc6_and_fc7_only",),
           "the dropout after fc6 removed"),
    Mutant("no_relu_in_fc", "alexnet_tf/model.py",
           'keras.layers.Dense(units(4096), activation="relu"',
           "keras.layers.Dense(units(4096), activation=None",
           (M + "test_relu_after_every_hidden_layer_and_softmax_at_the_end",),
           "fc6 and fc7 without ReLU"),
    Mutant("init_std_0.005", "alexnet_tf/model.py",
           "WEIGHT_STDDEV = 0.01",
           "WEIGHT_STDDEV = 0.005",
           (M + "test_initialisation_statistics",),
           "weights from N(0, 0.005) instead of N(0, 0.01)"),
    Mutant("positive_biases_0", "alexnet_tf/model.py",
           'POSITIVE_BIAS = {"paper": 1.0,',
           'POSITIVE_BIAS = {"paper": 0.0,',
           (M + "test_initialisation_statistics",),
           "biases 0 instead of 1 in conv2/4/5, fc6/7"),
    Mutant("conv4_bias_0", "alexnet_tf/model.py",
           'POSITIVE_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")',
           'POSITIVE_BIAS_LAYERS = ("conv2", "conv5", "fc6", "fc7")',
           (M + "test_initialisation_statistics",),
           "conv4's bias left at 0"),
    Mutant("lrn_alpha_over_n", "alexnet_tf/layers.py",
           'alpha = self.alpha / self.size if self.convention == "caffe" else self.alpha',
           "alpha = self.alpha / self.size",
           ("tests/test_layers.py::test_lrn_matches_formula_float32_including_edge_channels",),
           "LRN's alpha divided by n (Caffe's convention with the paper's number)"),
    Mutant("lrn_k_1", "alexnet_tf/layers.py",
           "LRN_K = 2.0",
           "LRN_K = 1.0",
           ("tests/test_layers.py::test_lrn_defaults_are_the_papers",),
           "LRN k = 1 instead of 2"),
    Mutant("decay_on_biases", "alexnet_tf/optimizer.py",
           "if self.l2_decay and len(variable.shape) >= 2:",
           "if self.l2_decay and len(variable.shape) >= 1:",
           ("tests/test_optimizer.py::test_biases_are_not_decayed",),
           "weight decay applied to the biases too"),
    Mutant("decay_outside_momentum", "alexnet_tf/optimizer.py",
           """        if self.l2_decay and len(variable.shape) >= 2:
            gradient = ops.add(
                ops.cast(gradient, variable.dtype),
                ops.multiply(ops.cast(self.l2_decay, variable.dtype), variable),
            )
        super().update_step(gradient, variable, learning_rate)""",
           """        super().update_step(gradient, variable, learning_rate)
        if self.l2_decay and len(variable.shape) >= 2:
            decay = ops.multiply(ops.cast(learning_rate, variable.dtype), ops.cast(self.l2_decay, variable.dtype))
            variable.assign_sub(ops.multiply(decay, variable))""",
           ("tests/test_optimizer.py::test_decay_inside_momentum_differs_from_keras_decoupled_decay",),
           "weight decay applied outside the momentum (decoupled)"),
    Mutant("flips_never", "alexnet_tf/preprocess.py",
           "FLIP_PROBABILITY = 0.5",
           "FLIP_PROBABILITY = 0.0",
           (P + "test_random_flip_known_answer_and_probability",),
           "training crops never mirrored"),
    Mutant("flips_always", "alexnet_tf/preprocess.py",
           "FLIP_PROBABILITY = 0.5",
           "FLIP_PROBABILITY = 1.0",
           (P + "test_random_flip_known_answer_and_probability",),
           "training crops always mirrored"),
    Mutant("mean_image_not_mirrored", "alexnet_tf/device_preprocess.py",
           "images = _mirror_where(tf.reshape(view.flip, [-1]), images)",
           "images = _mirror_where(tf.reshape(view.flip, [-1]), pixels) - means",
           (P + "test_train_view_with_mean_image_is_a_crop_of_the_mean_subtracted_square",),
           "a flipped crop minus the unmirrored mean image"),
    Mutant("crop_last_offset_unreachable", "alexnet_tf/preprocess.py",
           "tf.stack([height - crop_size + 1, width - crop_size + 1])",
           "tf.stack([height - crop_size, width - crop_size])",
           (P + "test_random_crop_always_inside_image",),
           "random crop offsets off by one (the last position never drawn)"),
    Mutant("training_crop_last_offset_unreachable", "alexnet_tf/preprocess.py",
           "limit = image_size - input_size + 1",
           "limit = image_size - input_size",
           (P + "test_training_draws_in_blocks",),
           "the input pipeline's crop offsets off by one (the last position never drawn)"),
    Mutant("pca_first_component_only", "alexnet_tf/preprocess.py",
           "alpha = std * tf.random.stateless_normal([3] if count is None else [count, 3], seed=seed)",
           "alpha = std * tf.random.stateless_normal([3] if count is None else [count, 3], seed=seed)"
           " * tf.constant([1.0, 0.0, 0.0])",
           (P + "test_pca_noise_variance_per_eigen_direction[per_image]",
            P + "test_pca_noise_variance_per_eigen_direction[block]"),
           "PCA colour noise along the first principal component only"),
    Mutant("pca_eigenvalues_reversed", "alexnet_tf/preprocess.py",
           "alpha * tf.constant(eigenvalues, tf.float32)",
           "alpha * tf.constant(eigenvalues, tf.float32)[::-1]",
           (P + "test_pca_noise_variance_per_eigen_direction[per_image]",
            P + "test_pca_noise_variance_per_eigen_direction[block]"),
           "PCA eigenvalues paired with the wrong eigenvectors"),
    Mutant("eval_centre_off_by_one", "alexnet_tf/preprocess.py",
           "offset = (size - crop) // 2",
           "offset = (size - crop + 1) // 2",
           (P + "test_eval_view_known_answer_with_mean_image",),
           "the centre-crop view one pixel off centre"),
    Mutant("ten_crop_mirror_centre_off_by_one", "alexnet_tf/preprocess.py",
           "(tf.reverse(image, axis=[-2]), right - right // 2)",
           "(tf.reverse(image, axis=[-2]), right // 2)",
           (P + "test_ten_crop_mirror_patches_are_reflections_with_odd_margin",),
           "the mirrored centre patch shifted by one column"),
    Mutant("ten_crop_corner_wrong", "alexnet_tf/preprocess.py",
           "corners = [(0, 0), (0, right), (bottom, 0), (bottom, right)]",
           "corners = [(0, 0), (0, right), (bottom, 0), (bottom, right - 1)]",
           (P + "test_ten_crop_exact_positions",),
           "the bottom-right patch one column short of the corner"),
    Mutant("ten_crop_logit_average", "alexnet_tf/evaluation.py",
           "prob = tf.reduce_mean(tf.reshape(prob, [shape[0], shape[1], -1]), axis=1)",
           "prob = tf.reduce_mean(tf.reshape(tf.math.log(prob), [shape[0], shape[1], -1]), axis=1)",
           ("tests/test_evaluation.py::test_ten_crop_averages_softmax_probabilities_not_logits",),
           "10-crop averages log probabilities (logits) instead of the softmax"),
    Mutant("eval_drops_short_batch", "alexnet_tf/data.py",
           "dataset = dataset.batch(batch_size, drop_remainder=training)",
           "dataset = dataset.batch(batch_size, drop_remainder=True)",
           ("tests/test_data.py::test_eval_reads_every_record_once_in_order",),
           "evaluation drops the short last batch"),
    Mutant("converter_label_plus_one", "alexnet_tf/converter/run.py",
           'label_of = {wnid: i + options["label_offset"] for i, wnid in enumerate(classes.synsets)}',
           'label_of = {wnid: i + 1 + options["label_offset"] for i, wnid in enumerate(classes.synsets)}',
           ("tests/test_converter_run.py::test_resize_mode_and_custom_labels",),
           "the converter writes every label one too high"),
    Mutant("records_not_reseeded_per_epoch", "alexnet_tf/sources.py",
           "epoch_config = config.replace(seed=epoch_seed(config, epoch))",
           "epoch_config = config",
           ("tests/test_training.py::test_each_epoch_reads_the_records_in_a_new_order",),
           "every epoch reads the records in the same order"),
    Mutant("lr_divided_by_5", "alexnet_tf/optimizer.py",
           "LR_DIVISOR = 10.0",
           "LR_DIVISOR = 5.0",
           ("tests/test_config.py::test_paper_plateau_rule_divides_by_ten_three_times",),
           "the learning rate divided by 5 instead of 10"),
    Mutant("momentum_0.95", "alexnet_tf/config.py",
           "momentum: float = 0.9",
           "momentum: float = 0.95",
           ("tests/test_config.py::test_paper_preset_is_the_papers_recipe",),
           "the paper preset's momentum changed"),
    Mutant("four_lr_reductions", "alexnet_tf/config.py",
           "max_lr_reductions: int = 3",
           "max_lr_reductions: int = 4",
           ("tests/test_config.py::test_paper_preset_is_the_papers_recipe",),
           "the learning rate reduced four times instead of three"),
    Mutant("mid_epoch_resume_skip_deleted", "alexnet_tf/data.py",
           "        dataset = dataset.skip(skip_records)\n",
           "        dataset = dataset\n",
           ("tests/test_training.py::test_resuming_mid_epoch_skips_batches_without_decoding_them",
            "tests/test_training.py::test_kill_9_mid_epoch_and_resume_matches_an_uninterrupted_run[default_loops]"),
           "a mid-epoch resume trains again on the batches already used"),
]


@dataclasses.dataclass
class Outcome:
    """What happened to one mutant."""

    mutant: Mutant
    status: str  # "killed", "survived" or "error"
    by: str  # the failing test, or the reason for an error
    seconds: float


def copy_repository(destination: pathlib.Path) -> pathlib.Path:
    """The git-tracked files of ROOT under ``destination/<name>``, with ``../shared`` linked beside."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    copy = destination / ROOT.name
    for relative in filter(None, files.decode().split("\0")):
        source = ROOT / relative
        if source.is_file():
            target = copy / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (destination / "shared").symlink_to(shared, target_is_directory=True)
    return copy


def run_pytest(copy: pathlib.Path, tests: list[str], junit: pathlib.Path | None = None) -> tuple[int, str]:
    """(return code, output) of pytest on ``tests`` in ``copy``; return code -1 on timeout."""
    env = {**os.environ, "CI": "1", "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    if junit:
        command.append(f"--junitxml={junit}")
    try:
        result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True,
                                timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_SECONDS} s"
    return result.returncode, result.stdout + result.stderr


def first_failure(output: str) -> str:
    """The first ``FAILED``/``ERROR`` node id in pytest's short summary, else the last line."""
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    if match:
        return match.group(1)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def baseline_failures(copy: pathlib.Path, tests: list[str]) -> dict[str, str]:
    """Tests among ``tests`` that do not pass on the unmutated copy, with pytest's verdict."""
    junit = copy.parent / "baseline.xml"
    unique = sorted(set(tests))
    # Without -x, so every test gets a verdict.
    env = {**os.environ, "CI": "1", "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *unique]
    try:
        result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True,
                                timeout=3 * TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return {test: "baseline timed out" for test in unique}
    if not junit.exists():
        return {test: f"baseline did not run (exit {result.returncode})" for test in unique}
    passed = set()
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        if not any(child.tag in ("failure", "error", "skipped") for child in case):
            module = case.get("classname", "").replace(".", "/") + ".py"
            passed.add(f"{module}::{case.get('name')}")
    return {test: "fails or skips on the unmutated copy" for test in unique if test not in passed}


def apply_and_run(copy: pathlib.Path, mutant: Mutant) -> Outcome:
    """Applies ``mutant`` to ``copy``, runs its tests, restores the file."""
    start = time.perf_counter()
    path = copy / mutant.path
    if not path.exists():
        return Outcome(mutant, "error", f"{mutant.path} does not exist", 0.0)
    original = path.read_text(encoding="utf-8")
    count = original.count(mutant.old)
    if count != 1:
        return Outcome(mutant, "error", f"snippet found {count} times in {mutant.path} (expected once)", 0.0)
    try:
        path.write_text(original.replace(mutant.old, mutant.new), encoding="utf-8")
        code, output = run_pytest(copy, list(mutant.tests))
    finally:
        path.write_text(original, encoding="utf-8")
    seconds = time.perf_counter() - start
    if code == 0:
        return Outcome(mutant, "survived", "", seconds)
    if code == -1:
        return Outcome(mutant, "killed", "timeout", seconds)
    if code == 1:  # tests ran and failed
        return Outcome(mutant, "killed", first_failure(output), seconds)
    if code == 2:  # the tests did not run (an import or collection error): not a kill
        return Outcome(mutant, "error", f"tests did not run (collection error): {first_failure(output)}", seconds)
    return Outcome(mutant, "error", f"pytest exit status {code}: {first_failure(output)}", seconds)


def markdown_table(outcomes: list[Outcome]) -> str:
    """One row per mutant: name, file, what changed, result, the test that caught it, seconds."""
    lines = ["| mutant | file | deviation | result | caught by | s |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        if o.status == "killed":
            by = f"`{o.by}`"
        elif o.status == "survived":
            by = f"expected: {o.mutant.note}" if o.mutant.note else "NOT CAUGHT"
        else:
            by = o.by
        lines.append(f"| {o.mutant.name} | `{o.mutant.path}` | {o.mutant.what} | {o.status} | {by} | "
                     f"{o.seconds:.0f} |")
    killed = sum(o.status == "killed" for o in outcomes)
    lines += ["", f"{killed} of {len(outcomes)} mutants killed."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    del argv

    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        raise SystemExit("paper_mutants.py: two mutants share a name")
    if FLAGS.list:
        for m in MUTANTS:
            print(f"{m.name:36s} {m.path:26s} {' '.join(m.tests)}{'  (' + m.note + ')' if m.note else ''}")
        return 0
    selected = MUTANTS
    if FLAGS.only:
        unknown = sorted(set(FLAGS.only) - set(names))
        if unknown:
            raise SystemExit(f"--only: unknown mutant(s) {unknown}; see --list")
        selected = [m for m in MUTANTS if m.name in FLAGS.only]

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="paper_mutants_") as temporary:
        copy = copy_repository(pathlib.Path(temporary))
        all_tests = [t for m in selected for t in m.tests]
        print(f"baseline: {len(set(all_tests))} tests on the unmutated copy in {copy}", flush=True)
        broken = baseline_failures(copy, all_tests)
        for test, reason in broken.items():
            print(f"  baseline: {test}: {reason}", flush=True)
        outcomes = []
        for mutant in selected:
            failing = [t for t in mutant.tests if t in broken]
            if failing:
                outcome = Outcome(mutant, "error", f"baseline: {failing[0]} {broken[failing[0]]}", 0.0)
            else:
                outcome = apply_and_run(copy, mutant)
            outcomes.append(outcome)
            print(f"{outcome.status:8s} {mutant.name:36s} {outcome.seconds:5.0f} s  {outcome.by}", flush=True)

    table = markdown_table(outcomes)
    pathlib.Path(FLAGS.table).write_text(table, encoding="utf-8")
    print()
    print(table)
    print(f"({time.perf_counter() - start:.0f} s in all; table written to {FLAGS.table})")
    harness.print_figures({
        "mutants": len(outcomes),
        "killed": sum(o.status == "killed" for o in outcomes),
        "survived": [o.mutant.name for o in outcomes if o.status == "survived"],
        "errors": [o.mutant.name for o in outcomes if o.status == "error"],
    })
    return 0


if __name__ == "__main__":
    harness.run(main)
