"""The procedural material textures (brushed metal, concrete, woven fabric, wood) and the
coordinate grids they and the defects are drawn on. Values are reflectances near 0-1, H×W×3."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d

MATERIALS: tuple[str, ...] = ("brushed_metal", "concrete", "woven_fabric", "wood")


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth 2-D Gaussian noise with unit standard deviation."""
    field = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _noise_1d(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    line = gaussian_filter1d(rng.standard_normal(n), sigma, mode="wrap")
    return line / (line.std() + 1e-8)


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return yy, xx


def rotated(size: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u across, v along) rotated by theta about the image centre."""
    yy, xx = grid(size)
    c = (size - 1) / 2
    x, y = xx - c, yy - c
    return x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)


def _tint(rng: np.random.Generator, base: Sequence[float], jitter: float) -> np.ndarray:
    return np.clip(np.asarray(base) * (1 + rng.uniform(-jitter, jitter, 3)), 0.2, 1.2)


def _brushed_metal(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = rotated(size, rng.uniform(-np.pi / 2, np.pi / 2))
    n = 3 * size
    fine, coarse = _noise_1d(rng, n, 0.6), _noise_1d(rng, n, 3.0)
    idx = u + n / 2 + rng.uniform(-size / 4, size / 4)
    streak = np.interp(idx, np.arange(n), fine)
    bands = np.interp(idx, np.arange(n), coarse)
    along = _noise(rng, size, size / 6)
    sheen = np.cos(np.pi * (v / size) * rng.uniform(0.5, 1.2) + rng.uniform(0, 2 * np.pi))
    g = 0.55 + 0.045 * streak + 0.035 * bands + 0.02 * along + 0.05 * sheen
    g += 0.012 * rng.standard_normal((size, size))
    tint = _tint(rng, (0.93, 0.96, 1.0), 0.04) * rng.uniform(0.9, 1.1)
    return g[..., None] * tint


def _concrete(rng: np.random.Generator, size: int) -> np.ndarray:
    g = 0.5 + 0.05 * _noise(rng, size, size / 5) + 0.035 * _noise(rng, size, size / 14)
    g += 0.025 * _noise(rng, size, 1.2) + 0.02 * rng.standard_normal((size, size))
    pores = (rng.random((size, size)) < 0.015) * rng.uniform(0.05, 0.15, (size, size))
    grit = (rng.random((size, size)) < 0.01) * rng.uniform(0.03, 0.08, (size, size))
    g += gaussian_filter(grit - pores, 0.5) * 2.5
    tint = _tint(rng, (1.0, 0.97, 0.91), 0.05) * rng.uniform(0.9, 1.15)
    return g[..., None] * tint


_FABRIC_COLOURS = ((0.35, 0.42, 0.7), (0.5, 0.6, 0.4), (0.75, 0.4, 0.4), (0.85, 0.78, 0.6), (0.6, 0.6, 0.62))


def _woven_fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = rotated(size, rng.uniform(-0.35, 0.35))
    period = max(3.0, rng.uniform(5.0, 8.0) * size / 64)
    u = u + rng.uniform(0, period) + 0.5 * _noise(rng, size, 3.0)
    v = v + rng.uniform(0, period) + 0.5 * _noise(rng, size, 3.0)
    warp = np.cos(np.pi * u / period) ** 2  # thread profiles, bright at thread centres
    weft = np.cos(np.pi * v / period) ** 2
    parity = (np.floor(u / period + 0.5) + np.floor(v / period + 0.5)) % 2
    g = 0.38 + 0.3 * np.where(parity == 0, warp, weft) + 0.025 * _noise(rng, size, 0.7)
    g += 0.03 * _noise(rng, size, size / 5)
    colour = np.asarray(_FABRIC_COLOURS[rng.integers(len(_FABRIC_COLOURS))])
    tint = _tint(rng, colour / colour.max(), 0.08) * rng.uniform(0.95, 1.15)
    return g[..., None] * tint


def _wood(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = grid(size)
    ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(1.2, 3.0) * size
    cy, cx = size / 2 + dist * np.sin(ang), size / 2 + dist * np.cos(ang)
    r = np.hypot(yy - cy, xx - cx) + 2.0 * (size / 64) * _noise(rng, size, size / 8)
    period = rng.uniform(4.0, 8.0) * size / 64
    rings = (0.5 + 0.5 * np.sin(2 * np.pi * r / period + rng.uniform(0, 2 * np.pi))) ** 3
    n = int(r.max()) + 4
    grain = np.interp(r * 1.7, np.arange(2 * n), _noise_1d(rng, 2 * n, 0.6))
    g = 0.58 - 0.13 * rings + 0.025 * grain + 0.04 * _noise(rng, size, size / 4)
    g += 0.012 * rng.standard_normal((size, size))
    tint = _tint(rng, (1.0, 0.72, 0.46), 0.06) * rng.uniform(0.9, 1.15)
    return g[..., None] * tint


MATERIAL_FNS = {
    "brushed_metal": _brushed_metal,
    "concrete": _concrete,
    "woven_fabric": _woven_fabric,
    "wood": _wood,
}
