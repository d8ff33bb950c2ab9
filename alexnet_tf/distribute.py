"""Which distribution strategy a run uses, and which of its workers is the chief (section 3.2).

The paper split the network over two GPUs; here the same model runs data-parallel under
``tf.distribute``: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` describes a cluster,
``MirroredStrategy`` over two or more local devices, one device otherwise. Training, evaluation,
``evaluate.py`` and the benchmarks create their strategy here, and ask here whether this process
is the chief, the one worker that writes the work directory. ``overflow_on_every_replica`` makes
the replicas agree on a float16 overflow before Keras's loss scaling looks at their gradients.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from absl import logging

from alexnet_tf.config import ConfigError

CHIEF = "chief"
WORKER = "worker"


def make_strategy(num_gpus: int | None = None, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """The distribution strategy of a run.

    ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` is set; otherwise ``MirroredStrategy``
    over ``devices`` (or the first ``num_gpus`` visible GPUs, all by default) when there are two
    or more, and one device otherwise.

    Args:
      num_gpus: how many GPUs to use (None: all visible; 0: the CPU).
      devices: explicit device names, e.g. ``["/cpu:0", "/cpu:1"]`` (overrides ``num_gpus``).

    Raises:
      ValueError: when ``num_gpus`` asks for more GPUs than are visible.
    """
    if os.environ.get("TF_CONFIG"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        logging.info("MultiWorkerMirroredStrategy: %d replicas in sync", strategy.num_replicas_in_sync)
        return strategy
    if devices is None:
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if num_gpus is not None and num_gpus > len(gpus):
            raise ConfigError(f"--num_gpus={num_gpus} but only {len(gpus)} GPU(s) are visible; pass "
                              f"--num_gpus={len(gpus)} or leave it out (0 runs on the CPU)")
        devices = gpus[: len(gpus) if num_gpus is None else num_gpus] or ["/cpu:0"]
    if len(devices) == 1:
        logging.info("One device: %s", devices[0])
        return tf.distribute.OneDeviceStrategy(devices[0])
    logging.info("MirroredStrategy over %s", devices)
    return tf.distribute.MirroredStrategy(devices)


def _cluster_resolver(strategy: tf.distribute.Strategy) -> tf.distribute.cluster_resolver.ClusterResolver | None:
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver if resolver is not None and resolver.task_type else None


def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in its task type (0 outside a multi-worker cluster)."""
    resolver = _cluster_resolver(strategy)
    return int(resolver.task_id) if resolver is not None else 0


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: the ``chief``, else worker 0 of a cluster without one.

    Every process outside a multi-worker cluster is its own chief.
    """
    resolver = _cluster_resolver(strategy)
    if resolver is None or resolver.task_type == CHIEF:
        return True
    has_chief = CHIEF in resolver.cluster_spec().as_dict()
    return resolver.task_type == WORKER and resolver.task_id == 0 and not has_chief


def describe(strategy: tf.distribute.Strategy) -> str:
    """A one-line account of where a run computes, e.g. ``2 replicas (MirroredStrategy: CPU:0, CPU:1)``."""
    replicas = strategy.num_replicas_in_sync
    local = "/job:localhost/replica:0/task:0/device:"
    devices = ", ".join(d.removeprefix(local) for d in getattr(strategy.extended, "worker_devices", ()) or ())
    where = f"{type(strategy).__name__}: {devices}" if devices else type(strategy).__name__
    return f"{replicas} replica{'s' if replicas != 1 else ''} ({where})"


def mean_over_replicas(variables: list[tf.Variable]) -> None:
    """Sets each replica's copy of ``variables`` to their mean over replicas (in replica context).

    Batch normalisation's moving statistics (``--batch_norm``) are assigned on each replica from
    its own share of the batch. A mirrored variable without an aggregation then keeps a different
    copy on every replica: the checkpoint and the export take the first replica's, and each
    replica validates with its own. Averaging after every step keeps the copies equal, at the
    mean of what each replica measured.
    """
    context = tf.distribute.get_replica_context()
    if context.num_replicas_in_sync == 1:
        return
    means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [v.value for v in variables])
    for variable, mean in zip(variables, means, strict=True):
        variable.assign(mean)


def overflow_on_every_replica(gradients: list[tf.Tensor]) -> list[tf.Tensor]:
    """Makes every replica's gradients non-finite when any replica's are (in replica context).

    Keras' ``LossScaleOptimizer`` checks the gradients for overflow on each replica before they
    are summed and lets the first replica decide: an overflow on another replica alone would be
    summed into the weights and leave the scale as it is. Agreeing on one flag first (an
    all-reduce over every replica of every worker) makes each replica's check see the overflow,
    so the step is skipped everywhere and the scale lowered.
    """
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
    overflows = tf.cast(tf.logical_not(finite), tf.float32)
    overflows = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, overflows)
    poison = tf.where(overflows > 0, math.nan, 1.0)
    return [g * tf.cast(poison, g.dtype) for g in gradients]


def unless_empty_replica(images: tf.Tensor, compute: Callable[[], Any], empty: Callable[[], Any]) -> Any:
    """``compute()``, or ``empty()`` on a replica that the last global batch left without images.

    A global batch smaller than the replicas need (the short last batch of a pass over the
    validation records) leaves some replicas nothing. On CPU a convolution of an empty batch
    returns the wrong shape, so such a replica does not run the network: it contributes
    ``empty()`` (zeros, or no rows), which leaves the sums and gathers over replicas exact.
    """
    return tf.cond(tf.shape(images)[0] > 0, compute, empty)
