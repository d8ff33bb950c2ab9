"""The command lines: each module holds one command's flags and ``main``, and ``run`` starts it.

``train.py``, ``evaluate.py`` and ``data_prep/build_tfrecords.py`` in the repository's root are
entry scripts that call ``run``; installing the package (``pip install -e .``) adds the same
commands as ``alexnet-train``, ``alexnet-evaluate`` and ``alexnet-build-tfrecords``. Each module
quiets TensorFlow (``console.quiet_tensorflow``) before it imports anything that loads TensorFlow,
so nothing here may import TensorFlow.
"""
