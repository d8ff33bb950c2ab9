"""Trains AlexNet (``alexnet_tf/apps/train.py``; installed, also ``alexnet-train``). ``--help`` lists the flags."""

from alexnet_tf.apps import train

if __name__ == "__main__":
    train.run()
