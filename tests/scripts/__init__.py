"""Programs the tests start in a fresh interpreter (``python -m tests.scripts.<name> <mode> ...``).

A run that needs its own TensorFlow (logical CPU devices, ``TF_CONFIG``, ``kill -9``) is a mode
of one of these modules; the test that starts it reads what the mode wrote.
"""
