"""Which strategy a run gets, which worker is chief, and replicas agreeing on an overflow.

Two replicas and two workers need a fresh TensorFlow: tests/test_training.py and
tests/test_replicas.py run those in subprocesses, through ``make_strategy`` and these helpers.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import distribute


def _fake_strategy(task_type, task_id, cluster):
    """An object with the ``cluster_resolver`` a multi-worker strategy has, for the chief questions."""
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
    )
    return types.SimpleNamespace(cluster_resolver=resolver)


def test_no_gpus_gives_one_cpu_device_that_is_its_own_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = distribute.make_strategy(num_gpus=0)
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1
    assert distribute.is_chief(strategy) and distribute.task_id(strategy) == 0
    assert distribute.describe(strategy) == "1 replica (OneDeviceStrategy: CPU:0)"


def test_explicit_devices_and_too_many_gpus(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert isinstance(distribute.make_strategy(devices=["/cpu:0"]), tf.distribute.OneDeviceStrategy)
    visible = len(tf.config.list_logical_devices("GPU"))
    with pytest.raises(ValueError, match=f"--num_gpus={visible + 1} but only {visible} GPU"):
        distribute.make_strategy(num_gpus=visible + 1)


@pytest.mark.parametrize("task_type, task_id, cluster, chief", [
    ("chief", 0, {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, True),
    ("worker", 0, {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, False),  # the chief writes, not worker 0
    ("worker", 0, {"worker": ["b:1", "c:1"]}, True),  # no chief: worker 0 writes
    ("worker", 1, {"worker": ["b:1", "c:1"]}, False),
])
def test_exactly_one_chief_per_cluster(task_type, task_id, cluster, chief):
    strategy = _fake_strategy(task_type, task_id, cluster)
    assert distribute.is_chief(strategy) is chief
    assert distribute.task_id(strategy) == task_id


def test_a_strategy_without_a_cluster_is_chief():
    assert distribute.is_chief(tf.distribute.get_strategy())
    assert distribute.task_id(tf.distribute.get_strategy()) == 0


def test_an_overflow_poisons_every_gradient_and_finite_ones_pass_unchanged():
    finite = [tf.constant([1.0, -2.0]), tf.constant([[3.0]], tf.float16)]
    same = distribute.overflow_on_every_replica(finite)
    for before, after in zip(finite, same, strict=True):
        assert after.dtype == before.dtype
        np.testing.assert_array_equal(after, before)
    overflowing = [tf.constant([1.0, np.inf]), tf.constant([[3.0]], tf.float16)]
    poisoned = distribute.overflow_on_every_replica(overflowing)
    # Every tensor, not only the one that overflowed: the optimiser skips the whole step.
    assert all(np.all(np.isnan(g.numpy().astype(np.float32))) for g in poisoned)


def test_an_empty_replica_does_not_run_the_network_and_contributes_its_empty_value():
    calls = []

    def compute():
        calls.append(1)
        return tf.constant(1.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 2, 2, 3])])
    def guarded(images):
        return distribute.unless_empty_replica(images, lambda: tf.reduce_sum(images) + 1.0, lambda: tf.constant(0.0))

    assert float(guarded(tf.ones([2, 2, 2, 3]))) == 25.0
    assert float(guarded(tf.zeros([0, 2, 2, 3]))) == 0.0
    # Eagerly only the branch taken runs.
    assert float(distribute.unless_empty_replica(tf.zeros([0, 3]), compute, lambda: tf.constant(0.0))) == 0.0
    assert not calls
    assert float(distribute.unless_empty_replica(tf.zeros([1, 3]), compute, lambda: tf.constant(0.0))) == 1.0
    assert calls == [1]
