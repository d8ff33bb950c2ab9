"""The one top-k definition: ties, hit counts, and a whole pass's errors and confusions."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import metrics


def test_training_metrics_break_ties_as_the_evaluation_does():
    """Uniform outputs (a collapsed network) are not 100% right: ties go to the lower class."""
    uniform = tf.fill([6, 10], 0.1)
    labels = tf.constant([0, 3, 3, 7, 9, 4], tf.int32)
    top1, top5, count = (float(v) for v in metrics.correct_counts(labels, uniform, 5))
    report = metrics.summarize(metrics.top_k_classes(uniform, 5).numpy(), labels.numpy(), 10)
    assert count == 6
    assert top1 == 1.0  # only label 0: the tie's winner
    assert top5 == 4.0  # labels 0, 3, 3, 4 are among classes 0-4
    assert 1 - top1 / count == pytest.approx(report["top1_error"])
    assert 1 - top5 / count == pytest.approx(report["top5_error"])
    # A partial tie: classes 2 and 5 share the top; the lower index wins in both definitions.
    tied = tf.constant([[0.0, 0.0, 0.4, 0.0, 0.0, 0.4, 0.2, 0.0, 0.0, 0.0]] * 2)
    top1, _, _ = metrics.correct_counts(tf.constant([2, 5]), tied, 5)
    assert float(top1) == 1.0


def test_metrics_known_answer():
    top_k = np.array([[0, 1, 2, 3, 4], [2, 1, 0, 3, 4], [1, 5, 6, 7, 8], [3, 0, 1, 2, 4]])
    labels = np.array([0, 0, 0, 3])
    result = metrics.summarize(top_k, labels, num_classes=9)
    assert result["top1_error"] == pytest.approx(0.5)
    assert result["top5_error"] == pytest.approx(0.25)
    accuracy = {c["class"]: c["accuracy"] for c in result["per_class"]}
    assert accuracy[0] == pytest.approx(1 / 3) and accuracy[3] == 1.0 and accuracy[5] is None
    assert [(p["true"], p["predicted"], p["count"]) for p in result["most_confused"]] == [(0, 1, 1), (0, 2, 1)]
