"""The test suite: a ``test_<module>.py`` per package module, ``support/`` shared, ``scripts/`` run as children."""
