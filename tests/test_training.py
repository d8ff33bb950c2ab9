"""The training loop: workdir contract, resume, NaN stop, strategies, the built-in run.

Runs that need a fresh TensorFlow (logical CPU devices, TF_CONFIG, kill -9) run a mode of
``tests/scripts/training.py`` in a subprocess.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import signal
import socket
import time

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import data, records, sources, synthetic_data, training, views
from alexnet_tf import trainer as trainer_lib
from alexnet_tf import workdir as workdir_lib
from alexnet_tf.config import get_config
from tests.scripts.training import (
    NUM_IMAGES,
    TRAINED_WEIGHTS,
    learnable_arrays,
    learnable_inputs,
    run_state,
    tiny,
)
from tests.support import ROOT, run_python, run_script, start_script
from tests.support.converted import ASSORTED, SHAPES

# Mirrored (2 replicas) vs one device: the same sums in another order; float32 round-off.
MIRRORED_ATOL = 1e-5
# The same under mixed_float16: float16 activations and gradients summed in another grouping.
MIXED_FLOAT16_ATOL = 1e-4


def test_each_epoch_reads_the_records_in_a_new_order(converted):
    """Deterministic runs reseed the pipeline per epoch: epochs differ, the same epoch repeats."""
    # 24 records, each of its own class, in 4 shards: one batch is a whole epoch.
    config = get_config("tiny", image_size=67, input_size=67, batch_size=24, deterministic=True, seed=5,
                        num_classes=24, mean_subtraction="channel")
    inputs = sources.record_inputs(config, str(converted(ASSORTED)))

    def epoch_labels(epoch):
        return next(iter(inputs.train(tf.distribute.InputContext(), epoch)))[1].numpy().tolist()

    first = epoch_labels(0)
    assert set(first) <= set(range(24)) and len(set(first)) > 12
    assert epoch_labels(0) == first
    assert epoch_labels(1) != first and epoch_labels(2) != epoch_labels(1)


@pytest.mark.parametrize("deterministic", [False, True])
def test_epochs_read_on_from_one_pipeline_unless_deterministic(tmp_path, deterministic):
    """A pipeline per epoch only where the seeds need it: deleting an old one can stall for seconds."""
    config = tiny(epochs=3, deterministic=deterministic, steps_per_loop=3)
    inputs = learnable_inputs(config)
    built = []

    def train(context, epoch, skip_batches=0):
        built.append(epoch)
        return inputs.train(context, epoch, skip_batches)

    counted = dataclasses.replace(inputs, train=train)
    summary = training.train(config, str(tmp_path), inputs=counted, finish=False, verbose=False)
    assert summary["global_step"] == 3 * inputs.steps_per_epoch
    assert built == ([0, 1, 2] if deterministic else [0])


def test_train_writes_the_workdir_contract_and_resumes(tmp_path):
    config = tiny(epochs=1)
    inputs = learnable_inputs(config)
    first = training.train(config, str(tmp_path), inputs=inputs, verbose=False)
    assert first["epochs_completed"] == 1 and first["resumed_from_epoch"] == 0
    assert first["global_step"] == NUM_IMAGES // config.batch_size
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in ("val_top1_error", "val_top5_error", "epochs_completed", "resumed_from_epoch", "saved_model",
                "data_dir"):
        assert key in saved
    assert 0.0 <= saved["val_top1_error"] <= 1.0
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 1
    assert (tmp_path / "model.keras").exists()
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))
    assert list((tmp_path / "logs" / "validation").glob("events.out.tfevents.*"))

    second = training.train(config.replace(epochs=2), str(tmp_path), inputs=inputs, verbose=False)
    assert second["resumed_from_epoch"] == 1 and second["epochs_completed"] == 2
    assert second["global_step"] == 2 * first["global_step"]


def test_tensorboard_logs_hold_the_promised_scalars(tmp_path):
    config = tiny(epochs=1)
    training.train(config, str(tmp_path), inputs=learnable_inputs(config), verbose=False, finish=False)
    tags = {}
    for split in ("train", "validation"):
        for path in (tmp_path / "logs" / split).glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    tags.setdefault(split, set()).add(value.tag)
    assert {"loss", "top1_error", "top5_error", "lr", "images_per_second"} <= tags["train"]
    assert {"loss", "top1_error", "top5_error"} <= tags["validation"]


def test_resuming_with_another_model_shape_is_refused(tmp_path):
    config = tiny(epochs=1)
    training.train(config, str(tmp_path), inputs=learnable_inputs(config), verbose=False, finish=False)
    wider = config.replace(width=0.25, epochs=2)
    with pytest.raises(ValueError, match="config.json"):
        training.train(wider, str(tmp_path), inputs=learnable_inputs(wider), verbose=False, finish=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny(epochs=1)
    training.train(config, str(tmp_path), inputs=learnable_inputs(config), verbose=False, finish=False)
    good = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    images, labels = learnable_arrays(config)
    images[:] = np.nan
    poisoned = sources.array_inputs(config, images, labels)
    with pytest.raises(training.NonFiniteLossError, match="last good checkpoint is .*ckpt"):
        training.train(config.replace(epochs=2), str(tmp_path), inputs=poisoned, verbose=False)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == good
    for name, _ in tf.train.list_variables(good):
        if "VARIABLE_VALUE" in name and "optimizer" in name:
            assert np.all(np.isfinite(tf.train.load_variable(good, name))), name


def _smoothed_targets_entropy(smoothing, num_classes):
    """The least cross-entropy against smoothed targets: their own entropy."""
    top, rest = 1.0 - smoothing + smoothing / num_classes, smoothing / num_classes
    return -(top * np.log(top) + (num_classes - 1) * rest * np.log(rest))


def test_the_smoothed_loss_is_the_cross_entropy_against_smoothed_targets():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(7), size=5).astype(np.float32)
    labels = rng.integers(0, 7, 5)
    for smoothing in (0.0, 0.1, 0.6):
        targets = np.full((5, 7), smoothing / 7)
        targets[np.arange(5), labels] += 1.0 - smoothing
        expected = -(targets * np.log(probabilities)).sum(axis=1)
        got = trainer_lib.training_loss(tf.constant(labels), tf.constant(probabilities), smoothing)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("smoothing", [-0.1, 1.0])
def test_a_label_smoothing_outside_0_to_1_is_refused(smoothing):
    with pytest.raises(ValueError, match="--label_smoothing"):
        training.Trainer(tiny(label_smoothing=smoothing))


def test_the_command_line_refuses_a_wrong_label_smoothing_before_any_work(tmp_path):
    result = run_python([str(ROOT / "train.py"), "--label_smoothing=1.5"], cwd=tmp_path,
                        timeout=300)
    assert result.returncode != 0 and "--label_smoothing=1.5: must be at least 0 and below 1" in result.stderr
    assert not os.listdir(tmp_path)  # nothing drawn, converted or trained


@pytest.mark.parametrize("smoothing", [0.0, 0.5])
def test_the_loop_learns(tmp_path, smoothing):
    config = tiny(epochs=20, batch_size=8, dropout=0.0, learning_rate=0.003, weight_init="he", bias_init="caffe",
                   label_smoothing=smoothing)
    steps, losses = [], []

    def record(step, figures):
        steps.append(step)
        losses.append(figures["loss"])

    summary = training.train(config, str(tmp_path), inputs=learnable_inputs(config), verbose=False, finish=False,
                             step_callback=record)
    assert steps[-1] == 20 * NUM_IMAGES // 8  # one call per loop of steps
    tenth = max(len(losses) // 10, 1)
    # The training loss is against smoothed targets when asked: it stays above their entropy,
    # where the plain loss goes below it.
    floor = _smoothed_targets_entropy(0.5, config.num_classes)
    if smoothing:
        assert min(losses) > floor
    else:
        assert np.mean(losses[-tenth:]) < 0.5 * np.mean(losses[:tenth])
        assert np.mean(losses[-tenth:]) < floor
    assert summary["val_top1_error"] < 0.5, summary


@pytest.mark.parametrize("learning", [False, True], ids=["learning_rate_0", "learning"])
def test_a_loss_stuck_at_chance_warns_once(tmp_path, caplog, learning):
    """Learning rate 0 leaves the paper-initialised loss at ln(10): one warning, in the loop reaching step 10."""
    settings = dict(learning_rate=0.003, weight_init="he", bias_init="caffe") if learning else dict(learning_rate=0.0)
    config = tiny(epochs=3, batch_size=8, dropout=0.0, steps_per_loop=3, stall_warning_steps=10, **settings)
    losses = {}
    caplog.set_level(logging.WARNING, logger="absl")
    training.train(config, str(tmp_path), inputs=learnable_inputs(config), verbose=False, finish=False,
                   step_callback=lambda step, figures: losses.update({step: figures["loss"]}))
    warnings = [r.getMessage() for r in caplog.records if "has not started to learn" in r.getMessage()]
    crossing = min(step for step in losses if step >= 10)
    chance = np.log(config.num_classes)
    if learning:
        assert abs(losses[crossing] - chance) > 0.02 * chance and not warnings, (losses, warnings)
    else:
        assert abs(losses[crossing] - chance) < 0.02 * chance, losses
        assert len(warnings) == 1 and f"after {crossing} steps" in warnings[0] and "--learning_rate" in warnings[0]


def test_synthetic_inputs_time_the_step(tmp_path):
    config = tiny(epochs=1, steps_per_epoch=3)
    summary = training.train(config, str(tmp_path), synthetic=True, verbose=False, finish=False)
    assert summary["global_step"] == 3
    assert summary["val_top1_error"] is None


@pytest.mark.parametrize("overrides", [dict(precision="mixed_float16"), dict(precision="mixed_bfloat16"),
                                       dict(jit_compile=True, deterministic=False)])
def test_precision_and_xla_options_train(tmp_path, overrides):
    """The same steps as float32 without XLA: same first loss, and the update moves the second the same way."""

    def losses(config, workdir):
        found = []
        summary = training.train(config, str(workdir), synthetic=True, verbose=False, finish=False,
                                 step_callback=lambda step, figures: found.append(figures["loss"]))
        assert summary["global_step"] == 3 and np.isfinite(summary["weights_l2_norm"])
        return np.array(found)

    # Larger steps than the default, so that the updates change the loss by far more than round-off;
    # one step per loop, so that each step's loss is seen.
    base = dict(epochs=1, steps_per_epoch=3, learning_rate=0.05, dropout=0.0, steps_per_loop=1)
    reference = losses(tiny(**base), tmp_path / "float32")
    got = losses(tiny(**{**base, **overrides}), tmp_path / "option")
    tolerance = 2e-2 if overrides.get("precision") == "mixed_bfloat16" else 2e-3
    np.testing.assert_allclose(got, reference, rtol=tolerance)
    # The steps did change the loss, by more than the tolerance: the comparison is not vacuous.
    assert np.abs(np.diff(reference)).max() > 5 * tolerance * reference.max()


def test_deterministic_xla_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--jit_compile"):
        training.train(tiny(jit_compile=True), str(tmp_path), synthetic=True, verbose=False)
    get_config("imagenette", deterministic=True, jit_compile=False)  # either alone is fine
    get_config("imagenette", deterministic=False)


def test_the_command_line_refuses_a_deterministic_imagenette_run_with_xla_before_any_work(tmp_path):
    # The imagenette preset turns XLA on; --deterministic alone must stop before the download.
    result = run_python([str(ROOT / "train.py"), "--dataset=imagenette", "--deterministic"],
                        cwd=tmp_path, timeout=300)
    assert result.returncode != 0 and "--nojit_compile for a deterministic run" in result.stderr
    assert not os.listdir(tmp_path)  # nothing downloaded, converted or trained


def test_built_in_data_end_to_end(tmp_path):
    """Drawn JPEGs -> converter -> pipeline -> training -> centre/10-crop evaluation -> export."""
    data_dir = synthetic_data.prepare_shapes(
        str(tmp_path / "data"), train_per_class=8, val_per_class=2, num_workers=1
    )
    assert data.count_records(data_dir, "train") == 80
    config = get_config("shapes", data_dir=data_dir, epochs=1, batch_size=16, shuffle_buffer=80)
    summary = training.train(config, str(tmp_path / "run"), verbose=False)
    assert summary["data_dir"] == data_dir
    assert os.path.exists(os.path.join(summary["saved_model"], "saved_model.pb"))
    report = json.loads((tmp_path / "run" / "evaluation" / "report.json").read_text())
    assert report["num_images"] == 20
    assert summary["val_top1_error"] == report["center_crop"]["top1_error"]
    assert summary["val_ten_crop_top1_error"] == report["ten_crop"]["top1_error"]
    # The run's curves, drawn at its end from its logs, linked from the evaluation report.
    assert summary["curves"] == str(tmp_path / "run" / "curves.png") and os.path.exists(summary["curves"])
    assert "(../curves.png)" in (tmp_path / "run" / "evaluation" / "report.md").read_text()
    # Class names come from the drawn data set's metadata, through the export.
    assert (pathlib.Path(data_dir) / records.METADATA_FILE).read_text().splitlines()[0].endswith("\tdisc")


def test_resuming_mid_epoch_skips_batches_without_decoding_them(converted, monkeypatch):
    from alexnet_tf import preprocess

    config = tiny(batch_size=4, shuffle_buffer=80)
    inputs = sources.record_inputs(config, str(converted(SHAPES)))
    decoded = []
    original = preprocess.decode_train_crop

    def counting(encoded, *args):
        tick = tf.py_function(lambda: np.int32(len(decoded.append(1) or decoded)), [], tf.int32)
        with tf.control_dependencies([tick]):
            return tf.nest.map_structure(tf.identity, original(encoded, *args))

    monkeypatch.setattr(preprocess, "decode_train_crop", counting)
    trainer = training.Trainer(config, tf.distribute.OneDeviceStrategy("/cpu:0"))
    done = 14  # of 20 steps: 56 of the 80 records trained on before the checkpoint
    fresh = trainer.distribute(inputs, 1)
    expected = [next(fresh) for _ in range(done + 1)][-1]
    del fresh
    decoded.clear()
    trainer.step_in_epoch.assign(done)
    first = next(trainer.distribute(inputs, 1))
    np.testing.assert_array_equal(first[1], expected[1])  # the batch after the skipped ones
    for got, want in zip(first[0], expected[0], strict=True):  # with the same crop, flip and colour noise
        np.testing.assert_array_equal(got, want)
    assert len(decoded) < done * config.batch_size, f"{len(decoded)} records decoded to resume at step {done}"


def _batch_inputs(config, num_batches, poisoned=()):
    """Inputs of ``num_batches`` fixed batches per epoch, in order; those in ``poisoned`` (0-based) are NaN."""
    images, labels = learnable_arrays(config, num_images=num_batches * config.batch_size)
    for index in poisoned:
        images[index * config.batch_size:(index + 1) * config.batch_size] = np.nan

    def train(context, epoch, skip_batches=0):
        dataset = tf.data.Dataset.from_tensor_slices((views.FloatImages(images), labels))
        return dataset.batch(context.get_per_replica_batch_size(config.batch_size)).skip(skip_batches)

    return sources.Inputs(train, None, num_batches)


def test_nan_inside_a_loop_stops_naming_the_step_and_the_loop(tmp_path):
    """A non-finite loss at step 6, inside the loop of steps 5-8: the run stops after it, unsaved."""
    config = tiny(epochs=1, steps_per_loop=4, checkpoint_every_steps=4)
    steps = []
    with pytest.raises(training.NonFiniteLossError) as raised:
        training.train(config, str(tmp_path), inputs=_batch_inputs(config, 8, poisoned=[5]), verbose=False,
                       step_callback=lambda step, figures: steps.append(step))
    message = str(raised.value)
    assert "step 6 (global step 6), in the loop of steps 5-8" in message, message
    assert steps == [4]  # the first loop finished and was checkpointed; the second was not
    good = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert f"last good checkpoint is {good}." in message
    assert int(tf.train.load_variable(good, "global_step/.ATTRIBUTES/VARIABLE_VALUE")) == 4
    assert not (tmp_path / "summary.json").exists()


def test_loops_end_at_epochs_checkpoint_steps_and_profile_bounds(tmp_path):
    """steps_per_loop=3 with 4-step epochs, a checkpoint every 5 steps and steps 7-8 profiled."""
    config = tiny(epochs=3, steps_per_loop=3, checkpoint_every_steps=5, profile_steps="7,8")
    loops = []
    summary = training.train(config, str(tmp_path), inputs=_batch_inputs(config, 4), verbose=False, finish=False,
                             step_callback=lambda step, figures: loops.append(step))
    assert summary["global_step"] == 12
    # 1-3 | 4 (epoch) | 5 (checkpoint) | 6 (profile starts at 7) | 7-8 (profile ends, epoch) | 9-10 | 11-12
    assert loops == [3, 4, 5, 6, 8, 10, 12]
    saved = [int(tf.train.load_variable(path, "global_step/.ATTRIBUTES/VARIABLE_VALUE"))
             for path in tf.train.get_checkpoint_state(str(tmp_path / "checkpoints")).all_model_checkpoint_paths]
    assert saved == [8, 10, 12]  # the last three kept: epoch 2's end, the every-5 step, epoch 3's end
    # TensorBoard got one point per loop, at its last step.
    from alexnet_tf import curves

    assert sorted(curves.read_scalars(str(tmp_path / "logs" / "train"))["loss"]) == loops
    traces = list((tmp_path / workdir_lib.PROFILE_DIR).glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


@pytest.mark.parametrize("flag", ["8", "0,3", "5,2", "a,b"])
def test_a_wrong_profile_steps_flag_is_refused_before_training(tmp_path, flag):
    with pytest.raises(ValueError, match="--profile_steps"):
        training.train(tiny(profile_steps=flag), str(tmp_path), synthetic=True, verbose=False)
    assert not (tmp_path / "checkpoints").exists()


def test_sigterm_stops_after_the_loop_and_the_run_resumes_exactly(tmp_path):
    """SIGTERM during a run of 3-step loops: checkpointed at the loop's end, resumed to the same weights."""
    config = tiny(epochs=2, steps_per_loop=3, dropout=0.5)
    inputs = _batch_inputs(config, 5)  # 5 steps per epoch: loops 1-3, 4-5, 6-8, 9-10

    def terminate(step, figures):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag

    stopped = training.train(config, str(tmp_path / "stopped"), inputs=inputs, verbose=False, finish=False,
                             step_callback=terminate)
    assert stopped["stopped"] == "SIGTERM"
    assert int(tf.train.load_variable(stopped["checkpoint"], "step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 3
    loops = []
    resumed = training.train(config, str(tmp_path / "stopped"), inputs=inputs, verbose=False, finish=False,
                             step_callback=lambda step, figures: loops.append(step))
    assert loops == [5, 8, 10]  # the rest of epoch 1, then epoch 2
    whole = training.train(config, str(tmp_path / "whole"), inputs=inputs, verbose=False, finish=False)
    assert resumed["global_step"] == whole["global_step"] == 10
    a, b = (run_state(workdir_lib.latest_checkpoint(str(tmp_path / name))) for name in ("stopped", "whole"))
    assert a.keys() == b.keys() and len([name for name in a if name.startswith(TRAINED_WEIGHTS)]) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--data_dir"):
        training.train(tiny(), str(tmp_path), verbose=False)


# --------------------------------------------------------------------------------------------
# Subprocess tests


def _run_script(*args, timeout=120):
    return run_script("training", *args, timeout=timeout)


def _spawn(*args):
    return start_script("training", *args)


def test_mirrored_two_cpus_matches_one_device(tmp_path):
    """Without dropout, with dropout (masks equal by construction) and under mixed_float16."""
    out = tmp_path / "mirrored.json"
    result = _run_script("mirrored", out, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    variants = json.loads(out.read_text())
    assert set(variants) == {"float32", "dropout", "mixed_float16"}
    for name, figures in variants.items():
        tolerance = MIXED_FLOAT16_ATOL if name == "mixed_float16" else MIRRORED_ATOL
        assert figures["replicas"] == 2
        assert figures["moved"] > 100 * tolerance, (name, figures)  # the steps did change the weights
        assert figures["max_abs_difference"] < tolerance, (name, figures)


def test_loops_of_four_steps_equal_single_steps_on_two_replicas(tmp_path):
    """steps_per_loop=4 against 1 on 2 replicas, dropout on: the same weights, bit for bit.

    6 steps per epoch (loops of 4 and 2), 2 epochs, the learning rate divided after the first.
    """
    out = tmp_path / "loops.json"
    result = _run_script("loops", out, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["replicas"] == 2
    assert found["moved"] > 1e-3 and found["identical"], found
    single, looped = found["calls"]["1"], found["calls"]["4"]
    assert [c["step"] for c in single] == list(range(1, 13))
    assert [c["step"] for c in looped] == [4, 6, 10, 12]
    # Each loop's figures, summed on the device, are the means of its steps' figures.
    first = 0
    for call in looped:
        steps = [c for c in single if first < c["step"] <= call["step"]]
        for key in ("loss", "top1_error", "top5_error"):
            assert call[key] == pytest.approx(np.mean([c[key] for c in steps]), rel=1e-6, abs=1e-7), (key, call)
        assert {c["lr"] for c in steps} == {call["lr"]}  # the schedule is per epoch, whatever the loops
        first = call["step"]
    assert [c["lr"] for c in looped] == pytest.approx([0.01, 0.01, 0.001, 0.001])


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_loop", [0, 3], ids=["default_loops", "loops_of_3"])
def test_kill_9_mid_epoch_and_resume_matches_an_uninterrupted_run(converted, tmp_path, steps_per_loop):
    """Two replicas, dropout on, records through the pipeline; killed at a checkpoint mid-epoch.

    The uninterrupted run has the default steps_per_loop and a checkpoint every 2 steps; the
    killed one the same, or loops of 3 steps and a checkpoint every 3.
    """
    data_dir = converted(SHAPES)  # 80 training records: 5 steps of 16 per epoch
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    every = 3 if steps_per_loop else 2
    reference = _spawn("run", whole, 0.0, data_dir)
    victim = _spawn("run", killed, 1.0, data_dir, steps_per_loop, every)
    deadline = time.time() + 120
    # 5 steps per epoch: ckpt-1 is global step `every`, mid-epoch 1. The next save is a loop and
    # a 1 s pause after the loop away.
    while not (tf.train.latest_checkpoint(str(killed / "checkpoints")) or "").endswith("ckpt-1"):
        assert victim.poll() is None, victim.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    latest = tf.train.latest_checkpoint(str(killed / "checkpoints"))
    assert latest.endswith("ckpt-1"), latest
    assert int(tf.train.load_variable(latest, "step_in_epoch/.ATTRIBUTES/VARIABLE_VALUE")) == every  # mid-epoch
    assert int(tf.train.load_variable(latest, "epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 0
    assert not (killed / "summary.json").exists()
    assert reference.wait(timeout=180) == 0, reference.stdout.read()[-3000:]
    resumed = _run_script("run", killed, 0.0, data_dir, steps_per_loop, every, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["resumed_from_epoch"] == 0
    assert json.loads((whole / "summary.json").read_text())["resumed_from_epoch"] == 0
    a, b = np.load(whole / "weights.npz"), np.load(killed / "weights.npz")
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_sigterm_checkpoints_and_stops(tmp_path):
    process = _spawn("run", tmp_path, 0.3)
    deadline = time.time() + 60
    while not list((tmp_path / "checkpoints").glob("ckpt-2.index")):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output[-3000:]
    assert "SIGTERM" in output
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    step = int(tf.train.load_variable(latest, "global_step/.ATTRIBUTES/VARIABLE_VALUE"))
    assert 2 < step < 12  # saved on the way out, between the periodic checkpoints
    assert not (tmp_path / "summary.json").exists()


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_worker_multi_worker_mirrored_on_loopback(tmp_path):
    ports = _free_ports(2)
    workers = [_spawn("mwms", i, ports[0], ports[1], tmp_path / "run", tmp_path / f"worker{i}.json")
               for i in range(2)]
    outputs = [w.communicate(timeout=150)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    results = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    assert results[0]["replicas"] == results[1]["replicas"] == 2
    assert results[0]["global_step"] == results[1]["global_step"] == 4
    assert results[0]["weights_l2_norm"] == results[1]["weights_l2_norm"]
    assert results[0]["val_top1_error"] == results[1]["val_top1_error"]
    for result in results:  # loss scaling and dropout agree across workers
        assert result["overflow_loss_finite"] and result["overflow_step_skipped"], result
        assert result["overflow_scale_halved"] and result["worker_masks_differ"], result
    assert (tmp_path / "run" / "summary.json").exists()  # only the chief writes it
    assert not list((tmp_path / "run").glob(".worker_*"))
