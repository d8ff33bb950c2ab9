"""The paper's Figures 3 and 4: layout arithmetic, neighbour search, PNGs of the expected size."""

from __future__ import annotations

import ast

import numpy as np
import pytest
from PIL import Image

from alexnet_tf import figures
from alexnet_tf.model import build_alexnet
from tests.support import ROOT


def test_kernel_grid_places_each_tower_in_its_own_block():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(11, 11, 3, 96)).astype(np.float32)
    grid = figures.kernel_grid(kernel, towers=2)
    tile = 11 * figures.KERNEL_SCALE
    block = 3 * tile + 2 * figures.KERNEL_GAP  # 48 kernels: 3 rows of 16
    assert grid.shape == (2 * block + figures.TOWER_GAP, 16 * tile + 15 * figures.KERNEL_GAP, 3)
    # Kernel 48 (tower 2's first) starts the second block; kernel 17 is row 1, column 1 of the first.
    for index, top, left in ((0, 0, 0), (17, tile + figures.KERNEL_GAP, tile + figures.KERNEL_GAP),
                             (48, block + figures.TOWER_GAP, 0)):
        weights = kernel[..., index]
        stretched = np.round(255 * (weights - weights.min()) / (weights.max() - weights.min()))
        np.testing.assert_array_equal(grid[top : top + tile : figures.KERNEL_SCALE,
                                           left : left + tile : figures.KERNEL_SCALE], stretched)
    # The gap between the towers is background.
    assert (grid[block : block + figures.TOWER_GAP] == figures.BACKGROUND).all()


def test_nearest_is_euclidean_and_finds_itself():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(50, 16))
    queries = np.concatenate([features[[7, 21]], rng.normal(size=(1, 16))])
    found = figures.nearest(queries, features, k=4)
    distances = np.linalg.norm(queries[:, None] - features[None], axis=-1)
    np.testing.assert_array_equal(found, np.argsort(distances, axis=1)[:, :4])
    assert found[0, 0] == 7 and found[1, 0] == 21


def test_full_size_figure3_dimensions(tmp_path):
    path = figures.plot_conv1_kernels(build_alexnet(seed=0), str(tmp_path / "conv1.png"))
    assert Image.open(path).size == (734, 284)  # (16 * 44 + 15 * 2, 2 * (3 * 44 + 2 * 2) + 12)


def test_make_figures_writes_pngs_of_the_expected_size(tiny_run, tmp_path):
    run = tiny_run
    paths = figures.make_figures(run.model, run.config, run.data_dir, str(tmp_path), class_names=run.names,
                                 num_examples=6, num_queries=4, num_neighbours=5, max_train_images=64)
    s = run.config.input_size
    conv1 = run.model.get_layer("conv1").kernel.shape[-1]  # 12 at width 0.125: 6 per tower, one row
    expected = {
        "figure3": (6 * 44 + 5 * figures.KERNEL_GAP, 2 * 44 + figures.TOWER_GAP),
        "figure4_predictions": (round(6 * figures.PANEL_WIDTH_INCHES * figures.DPI),
                                round(figures.PANEL_HEIGHT_INCHES * figures.DPI)),
        "figure4_neighbours": (6 * s + 4 * figures.TILE_GAP + figures.QUERY_GAP, 4 * s + 3 * figures.TILE_GAP),
    }
    assert conv1 == 12
    for name, size in expected.items():
        image = Image.open(paths[name])
        assert image.size == size, name
        pixels = np.asarray(image.convert("RGB"))
        assert pixels.std() > 10, f"{name} is blank"


def test_figures_module_imports_matplotlib_only_when_drawing():
    # (TensorFlow itself loads matplotlib when it is installed, so sys.modules cannot tell.)
    tree = ast.parse((ROOT / "alexnet_tf" / "figures.py").read_text())
    imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    top_level = [alias.name for node in imports for alias in node.names]
    top_level += [node.module or "" for node in imports if isinstance(node, ast.ImportFrom)]
    assert not [name for name in top_level if name.startswith("matplotlib")]
    drawn_with_matplotlib = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                             and any(isinstance(n, ast.Import | ast.ImportFrom) and "matplotlib" in ast.dump(n)
                                     for n in ast.walk(node))}
    assert drawn_with_matplotlib == {"_save_rgb", "plot_predictions"}


@pytest.mark.parametrize("towers", [1, 2])
def test_kernel_grid_refuses_a_wrong_shape(towers):
    with pytest.raises(ValueError, match="kernel"):
        figures.kernel_grid(np.zeros((11, 11, 1, 96)), towers=towers)
