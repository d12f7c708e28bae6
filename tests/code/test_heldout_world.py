"""The benchmark's held-out surface world: its defects sit where their masks say, and it
owes nothing to the project's own generator or defect synthesiser."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, uniform_filter

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from heldout_surfaces import HELDOUT_DEFECTS, HELDOUT_MATERIALS, render_heldout  # noqa: E402


@pytest.mark.parametrize("defect", HELDOUT_DEFECTS)
def test_each_defect_changes_the_image_where_its_mask_is(defect: str) -> None:
    for i, material in enumerate(HELDOUT_MATERIALS):
        seed = 10 * i + HELDOUT_DEFECTS.index(defect)
        # the same seed with no defect renders the defect-free twin: same texture, camera and noise
        twin, none = render_heldout(np.random.default_rng(seed), 64, material, None, 0.9)
        image, mask = render_heldout(np.random.default_rng(seed), 64, material, defect, 0.9)
        assert not none.any() and mask.any()
        change = uniform_filter(np.abs(image.astype(float) - twin.astype(float)).sum(-1), 3)
        near = binary_dilation(mask, iterations=3)  # JPEG's 8×8 blocks smear a change a little
        assert near[np.unravel_index(change.argmax(), change.shape)], (material, defect)
        assert change[mask].mean() > 3 * change[~near].mean(), (material, defect)


def test_a_seed_renders_the_same_image_and_lighting_darkens_it() -> None:
    a, _ = render_heldout(np.random.default_rng(3), 64, "marble", "fibre", 0.9)
    b, _ = render_heldout(np.random.default_rng(3), 64, "marble", "fibre", 0.9)
    dark, _ = render_heldout(np.random.default_rng(3), 64, "marble", "fibre", 0.2)
    assert np.array_equal(a, b) and a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert dark.mean() < 0.35 * a.mean()


def test_the_world_imports_nothing_of_the_project() -> None:
    tree = ast.parse((BENCHMARKS / "heldout_surfaces.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "danvae" for name in imported), imported
