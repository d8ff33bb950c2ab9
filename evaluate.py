"""Evaluates a trained AlexNet (``alexnet_tf/apps/evaluate.py``; installed, also ``alexnet-evaluate``)."""

from alexnet_tf.apps import evaluate

if __name__ == "__main__":
    evaluate.run()
