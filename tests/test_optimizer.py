"""Section 5: PaperSGD applies v <- 0.9 v - 0.0005 lr w - lr g; w <- w + v, and the learning
rate is divided by 10 when the validation error stops improving (or at fixed epochs)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import PaperSGD, build_alexnet, optimizer
from alexnet_tf import config as config_lib
from alexnet_tf.config import get_config

pytestmark = pytest.mark.onednn  # CI runs these again with TF_ENABLE_ONEDNN_OPTS flipped


def _loss_and_grads(model, x, y):
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=False))
        loss = tf.reduce_mean(loss)
    return loss, tape.gradient(loss, model.trainable_variables)


def test_two_steps_equal_the_papers_update_by_hand():
    model = build_alexnet(num_classes=5, input_size=67, width=0.125, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 67, 67, 3)).astype(np.float32) * 50
    y = np.array([0, 1, 2, 3])
    lr, momentum, decay = 0.01, 0.9, 0.0005
    optimizer = PaperSGD(learning_rate=lr, momentum=momentum, l2_decay=decay)

    weights = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    velocity = [np.zeros_like(w) for w in weights]
    for _ in range(2):
        _, grads = _loss_and_grads(model, x, y)
        for i, (w, g, var) in enumerate(zip(weights, grads, model.trainable_variables, strict=True)):
            wd = decay if var.ndim >= 2 else 0.0  # biases are not decayed
            velocity[i] = momentum * velocity[i] - wd * lr * w - lr * g.numpy()
            weights[i] = w + velocity[i]
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    for want, var in zip(weights, model.trainable_variables, strict=True):
        np.testing.assert_allclose(var.numpy(), want, rtol=1e-5, atol=1e-8, err_msg=var.path)


def test_decay_inside_momentum_differs_from_keras_decoupled_decay():
    # With a zero gradient only the decay moves the weights. The paper's rule feeds the decay
    # into the velocity, so the second step moves further than the first; Keras's decoupled
    # weight_decay shrinks by the same factor each step.
    w0 = np.full((2, 2), 3.0, np.float32)
    paper = keras.Variable(w0)
    decoupled = keras.Variable(w0)
    ours = PaperSGD(learning_rate=0.1, momentum=0.9, l2_decay=0.5)
    theirs = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.5)
    zero = tf.zeros((2, 2))
    for _ in range(2):
        ours.apply_gradients([(zero, paper)])
        theirs.apply_gradients([(zero, decoupled)])
    # By hand: v1 = -0.05*3 = -0.15, w1 = 2.85; v2 = 0.9*-0.15 - 0.05*2.85 = -0.2775, w2 = 2.5725.
    np.testing.assert_allclose(paper.numpy(), 2.5725, rtol=1e-6)
    assert not np.allclose(decoupled.numpy(), paper.numpy(), atol=1e-3)


def test_biases_are_not_decayed():
    bias = keras.Variable(np.ones(3, np.float32))
    optimizer = PaperSGD(learning_rate=0.1, l2_decay=0.5)
    optimizer.apply_gradients([(tf.zeros(3), bias)])
    np.testing.assert_array_equal(bias.numpy(), 1.0)


def test_keras_weight_decay_is_refused():
    with pytest.raises(ValueError, match="l2_decay"):
        PaperSGD(weight_decay=0.0005)


def test_serialization_round_trip():
    optimizer = PaperSGD(learning_rate=0.02, momentum=0.8, l2_decay=0.001)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(clone, PaperSGD)
    assert clone.l2_decay == 0.001 and clone.momentum == 0.8
    assert float(clone.learning_rate) == pytest.approx(0.02)


def test_parse_lr_schedule():
    assert config_lib.parse_lr_schedule("plateau") == ("plateau", ())
    assert config_lib.parse_lr_schedule("step:30,60,80") == ("step", (30, 60, 80))
    for bad in ("step:", "step:60,30", "step:a", "cosine", "step:0,10"):
        with pytest.raises(ValueError, match="--lr_schedule"):
            config_lib.parse_lr_schedule(bad)


def test_step_schedule_divides_by_ten_at_boundaries():
    schedule = optimizer.LearningRateSchedule(get_config("tiny", lr_schedule="step:2,4", learning_rate=0.1))
    rates = [schedule.rate_for_epoch(e) for e in range(6)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_plateau_schedule_patience_limit_and_checkpoint(tmp_path):
    config = get_config("tiny", learning_rate=0.01, plateau_patience=2, max_lr_reductions=2)
    schedule = optimizer.LearningRateSchedule(config)
    errors = [0.9, 0.8, 0.8, 0.85]  # two epochs without improvement -> divide
    reduced = [schedule.end_epoch(e) for e in errors]
    assert reduced == [False, False, False, True]
    assert schedule.rate_for_epoch(4) == pytest.approx(0.001)
    path = tf.train.Checkpoint(schedule=schedule).write(str(tmp_path / "schedule"))
    restored = optimizer.LearningRateSchedule(config)
    tf.train.Checkpoint(schedule=restored).read(path).assert_consumed()
    assert restored.rate_for_epoch(4) == pytest.approx(0.001)
    assert float(restored.best_error.numpy()) == pytest.approx(0.8)
    # Two more stalls reach the limit of 2 reductions; a third changes nothing.
    assert [restored.end_epoch(0.9) for _ in range(6)] == [False, True, False, False, False, False]
    assert restored.rate_for_epoch(10) == pytest.approx(0.0001)
    assert int(restored.reductions.numpy()) == 2
