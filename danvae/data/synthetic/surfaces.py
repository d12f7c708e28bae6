"""One surface image rendered: a material texture, maybe a defect, a lighting level with a
gentle gradient, and sensor noise; and the lighting level drawn for an image."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from danvae.data.synthetic.defects import DEFECT_FNS, DEFECTS, Difficulty, as_difficulty
from danvae.data.synthetic.textures import MATERIAL_FNS, MATERIALS, rotated

WELL_LIT = (0.7, 1.0)  # lighting range of ordinary images
DARK = (0.2, 0.4)  # lighting range of the rare dark images
_MAX_SEED = 2**63


@dataclass
class Surface:
    """One rendered surface image with its defect mask."""

    image: np.ndarray  # uint8 H×W×3
    mask: np.ndarray  # bool H×W, all False for normal
    material: str
    defect: str | None  # None for normal
    lighting: float  # lighting level multiplier actually used, in (0, 1]


def sample_lighting(rng: np.random.Generator, dark_share: float) -> float:
    """Lighting level: U(0.7, 1.0) for most images, U(0.2, 0.4) with probability dark_share."""
    if not 0.0 <= dark_share <= 1.0:
        raise ValueError(f"dark_share must be between 0 and 1, got {dark_share}")
    lo, hi = DARK if rng.random() < dark_share else WELL_LIT
    return float(rng.uniform(lo, hi))


def render_surface(
    rng: np.random.Generator,
    size: int,
    material: str,
    defect: str | None,
    lighting: float,
    difficulty: Difficulty,
) -> Surface:
    """Render one surface; the texture, lighting gradient and noise do not depend on
    ``defect``, so the same rng state with ``defect=None`` gives the defect-free twin."""
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if material not in MATERIALS:
        raise ValueError(f"unknown material {material!r}; use one of {', '.join(MATERIALS)}")
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; use None or one of {', '.join(DEFECTS)}")
    if not 0.0 < lighting <= 1.0:
        raise ValueError(f"lighting must be in (0, 1], got {lighting}")
    difficulty = as_difficulty(difficulty)
    tex_rng, defect_rng, light_rng = (np.random.default_rng(s) for s in rng.integers(0, _MAX_SEED, 3))

    surface = MATERIAL_FNS[material](tex_rng, size)
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        prof, mask, direction = DEFECT_FNS[defect](defect_rng, size, difficulty)
        surface = surface * (1 + difficulty.contrast * prof[..., None] * direction)

    u, _ = rotated(size, light_rng.uniform(0, 2 * np.pi))
    gradient = 1 + light_rng.uniform(-0.1, 0.1) * u / (np.abs(u).max() + 1e-8)
    image = surface * (lighting * gradient)[..., None]
    image = image + light_rng.normal(0, light_rng.uniform(0.01, 0.02), image.shape)
    image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return Surface(image=image, mask=mask, material=material, defect=defect, lighting=float(lighting))
