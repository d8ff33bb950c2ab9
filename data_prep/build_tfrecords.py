"""Converts JPEG folders to TFRecords (``alexnet_tf/apps/build_tfrecords.py``; also ``alexnet-build-tfrecords``).

Needs the package installed (``pip install -e .``), or the repository's root on ``PYTHONPATH``.
"""

import sys

try:
    from alexnet_tf.apps import build_tfrecords
except ModuleNotFoundError as e:
    if e.name != "alexnet_tf":
        raise
    sys.stderr.write("build_tfrecords.py: the package alexnet_tf is not installed: run `pip install -e .` in the "
                     "repository's root (or put the root on PYTHONPATH)\n")
    sys.exit(2)

if __name__ == "__main__":
    build_tfrecords.run()
