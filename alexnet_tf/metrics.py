"""The top-k definition and hit counting of training, evaluation and the export (section 6).

The paper scores a network by its top-1 and top-5 error. One definition of "the k most probable
classes" serves the training loop's running numbers, the validation step, the evaluation's
reports and the exported model's outputs, so that they cannot disagree on ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from alexnet_tf import imagenet

TOP_K = 5  # the paper's top-5 error
MOST_CONFUSED = 10  # confused pairs listed by ``summarize``


def k_for(num_classes: int) -> int:
    """The k of top-k for a model of ``num_classes`` classes: ``TOP_K``, or all classes when fewer."""
    return min(TOP_K, num_classes)


def top_k_classes(probabilities: tf.Tensor, k: int) -> tf.Tensor:
    """The ``k`` most probable classes of each row, best first: [B, C] -> int32 [B, k].

    The one top-k definition of training and evaluation: ties go to the lower class index
    (``tf.math.top_k``'s order), so a collapsed network with uniform outputs scores as one
    that always predicts class 0, not as one that is always right (``tf.math.in_top_k``
    counts every tied class as a hit).
    """
    return tf.math.top_k(tf.cast(probabilities, tf.float32), k=k).indices


def correct_counts(labels: tf.Tensor, probabilities: tf.Tensor, top_k: int) -> tuple[tf.Tensor, ...]:
    """(top-1 hits, top-k hits, images) of a batch by ``top_k_classes``."""
    hits = tf.equal(top_k_classes(probabilities, top_k), tf.cast(labels, tf.int32)[:, None])
    top1 = tf.reduce_sum(tf.cast(hits[:, 0], tf.float32))
    topk = tf.reduce_sum(tf.cast(tf.reduce_any(hits, axis=1), tf.float32))
    return top1, topk, tf.cast(tf.shape(labels)[0], tf.float32)


def summarize(
    top_k: np.ndarray, labels: np.ndarray, num_classes: int, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Top-1 and top-5 error, per-class accuracy and the most confused pairs of a whole pass.

    Args:
      top_k: [N, k] predicted classes, best first (``top_k_classes``; k >= 1, top-5 error uses
        the first 5).
      labels: [N] true classes.
      num_classes: the number of classes.
      class_names: names for the report; ``class_i`` when None.
    """
    names = list(class_names) if class_names is not None else imagenet.fallback_class_names(num_classes)
    correct_top1 = top_k[:, 0] == labels
    correct_top5 = np.any(top_k[:, :TOP_K] == labels[:, None], axis=1)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, top_k[:, 0]), 1)
    counts = confusion.sum(axis=1)
    per_class = [
        {
            "class": i,
            "name": names[i],
            "images": int(counts[i]),
            "accuracy": float(confusion[i, i] / counts[i]) if counts[i] else None,
        }
        for i in range(num_classes)
    ]
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    flat = np.argsort(-off_diagonal, axis=None, kind="stable")[:MOST_CONFUSED]
    confused = []
    for index in flat:
        true, predicted = np.unravel_index(index, confusion.shape)
        if off_diagonal[true, predicted] == 0:
            break
        confused.append({
            "true": int(true),
            "true_name": names[true],
            "predicted": int(predicted),
            "predicted_name": names[predicted],
            "count": int(off_diagonal[true, predicted]),
            "share_of_true_class": float(off_diagonal[true, predicted] / counts[true]),
        })
    return {
        "top1_error": float(1.0 - correct_top1.mean()),
        "top5_error": float(1.0 - correct_top5.mean()),
        "per_class": per_class,
        "most_confused": confused,
    }
