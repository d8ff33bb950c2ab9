"""Shared fixtures: the real data in ../shared/data, shards made by the real converter, a trained tiny run."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from tests.support import require_shared_data
from tests.support.converted import IMAGENETTE, DrawnSet, RealSet, convert_drawn, convert_real


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """``../shared/data``, or a skip naming what is missing (a failure when ``CI`` is set)."""
    return require_shared_data()


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> Callable[[DrawnSet | RealSet], pathlib.Path]:
    """Shards written by the real converter: ``converted(spec)`` is the records directory of ``spec``.

    Every distinct set (``tests/support/converted.py``) is drawn or linked and converted once per session,
    in a directory of its own; tests share it, so a test that changes files works on a copy
    (``converted.copy_shards``). A ``RealSet`` needs ``../shared/data`` (see ``shared_data``).
    """
    made: dict[DrawnSet | RealSet, pathlib.Path] = {}

    def convert(spec: DrawnSet | RealSet) -> pathlib.Path:
        if spec not in made:
            root = tmp_path_factory.mktemp("converted")
            if isinstance(spec, RealSet):
                made[spec] = convert_real(spec, root, require_shared_data())
            else:
                made[spec] = convert_drawn(spec, root)
        return made[spec]

    return convert


@pytest.fixture(scope="session")
def tiny_run(converted):
    """A scaled-down AlexNet trained on a few converted Imagenette images (``tests/support/eval_helpers.py``)."""
    from tests.support.eval_helpers import train_tiny_run

    return train_tiny_run(converted(IMAGENETTE))


@pytest.fixture(scope="session")
def exported_tiny_run(tiny_run, tmp_path_factory) -> str:
    """``tiny_run`` exported by ``export.export_saved_model``: the SavedModel directory."""
    from alexnet_tf import export

    run = tiny_run
    directory = tmp_path_factory.mktemp("export") / "1"
    return export.export_saved_model(run.model, str(directory), run.config, run.stats, run.wnids, run.names)
