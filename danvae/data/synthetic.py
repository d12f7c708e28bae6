"""Embedded synthetic surface generator: the project's default data everywhere.

Procedural material textures (brushed metal, concrete, woven fabric, wood) with
subtle defects (scratch, pit, crack, stain) and their pixel masks, photographed
under a varying lighting level (the nuisance factor): most images well lit, a
rare share dark. Deterministic per seed, numpy + PIL only, no downloads.

    from danvae.data.synthetic import generate_surfaces
    gt = generate_surfaces("data/synthetic", n_normal=400, n_anomaly=40, size=64)
    print(gt.groupby("label").brightness.describe())

Layout written: ``normal/<material>/<id>.png``, ``anomaly/<defect>/<id>.png``,
``masks/<defect>/<id>.png`` (0/255, L mode), ``ground_truth.csv`` with columns
``file,label,defect,material,lighting,brightness``, and ``nuisance.csv`` (``path,lighting``:
the lighting level as a per-image factor, see :mod:`danvae.data.nuisance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from danvae.data.nuisance import NUISANCE_FILE
from danvae.images import brightness

__all__ = [
    "DEFECTS",
    "DIFFICULTIES",
    "MATERIALS",
    "Difficulty",
    "Surface",
    "brightness",
    "generate_surfaces",
    "render_surface",
    "sample_lighting",
]


@dataclass(frozen=True)
class Difficulty:
    """Defect size and contrast knob."""

    name: str
    contrast: float  # defect intensity change relative to the local surface (fraction)
    scale: float  # characteristic defect size as a fraction of the image side


DIFFICULTIES: dict[str, Difficulty] = {
    # easy: large, contrasty defects for smoke tests and demos, not for judging a detector
    "easy": Difficulty("easy", contrast=0.8, scale=0.2),
    "default": Difficulty("default", contrast=0.24, scale=0.06),
    "hard": Difficulty("hard", contrast=0.12, scale=0.04),
}
MATERIALS: tuple[str, ...] = ("brushed_metal", "concrete", "woven_fabric", "wood")
DEFECTS: tuple[str, ...] = ("scratch", "pit", "crack", "stain")

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


# ----------------------------------------------------------------------------- helpers
def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth 2-D Gaussian noise with unit standard deviation."""
    field = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _noise_1d(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    line = gaussian_filter1d(rng.standard_normal(n), sigma, mode="wrap")
    return line / (line.std() + 1e-8)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return yy, xx


def _rotated(size: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u across, v along) rotated by theta about the image centre."""
    yy, xx = _grid(size)
    c = (size - 1) / 2
    x, y = xx - c, yy - c
    return x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)


def _tint(rng: np.random.Generator, base: Sequence[float], jitter: float) -> np.ndarray:
    return np.clip(np.asarray(base) * (1 + rng.uniform(-jitter, jitter, 3)), 0.2, 1.2)


# ----------------------------------------------------------------------------- materials
def _brushed_metal(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _rotated(size, rng.uniform(-np.pi / 2, np.pi / 2))
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
    u, v = _rotated(size, rng.uniform(-0.35, 0.35))
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
    yy, xx = _grid(size)
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


_MATERIAL_FNS = {
    "brushed_metal": _brushed_metal,
    "concrete": _concrete,
    "woven_fabric": _woven_fabric,
    "wood": _wood,
}


# ----------------------------------------------------------------------------- defects
def _place(rng: np.random.Generator, pts: np.ndarray, size: int, margin: float) -> np.ndarray:
    """Shift (and if needed shrink) points (N×2, y/x) so they lie fully inside the image."""
    lo, hi = pts.min(0), pts.max(0)
    room = (size - 1 - 2 * margin) - (hi - lo)
    if (room < 0).any():
        shrink = (size - 1 - 2 * margin) / (hi - lo).max()
        pts = (pts - lo) * shrink + lo
        lo, hi = pts.min(0), pts.max(0)
        room = np.maximum((size - 1 - 2 * margin) - (hi - lo), 0)
    return pts - lo + margin + rng.uniform(0, 1, 2) * room


def _line_profile(pts: np.ndarray, size: int, width: float) -> np.ndarray:
    """Gaussian cross-section profile around a dense polyline, evaluated near its bbox."""
    prof = np.zeros((size, size))
    pad = int(np.ceil(3 * width)) + 1
    y0, x0 = np.maximum(np.floor(pts.min(0)).astype(int) - pad, 0)
    y1, x1 = np.minimum(np.ceil(pts.max(0)).astype(int) + pad + 1, size)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    d2 = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    prof[y0:y1, x0:x1] = np.exp(-0.5 * d2.min(-1) / width**2)
    return prof


def _densify(pts: np.ndarray, step: float = 0.4) -> np.ndarray:
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    t = np.concatenate([[0], np.cumsum(seg)])
    s = np.arange(0, t[-1] + 1e-9, step)
    return np.stack([np.interp(s, t, pts[:, 0]), np.interp(s, t, pts[:, 1])], 1)


def _scratch(rng: np.random.Generator, size: int, d: Difficulty):
    length = max(8.0, rng.uniform(3.0, 5.0) * d.scale * size)
    theta = rng.uniform(0, np.pi)
    t = np.linspace(-0.5, 0.5, 32)[:, None]
    direction, normal = np.array([np.sin(theta), np.cos(theta)]), np.array([np.cos(theta), -np.sin(theta)])
    bend = rng.uniform(-0.12, 0.12) * length
    pts = t * length * direction + (1 - 4 * t**2) * bend * normal
    pts = _densify(_place(rng, pts, size, margin=2.0))
    prof = _line_profile(pts, size, width=rng.uniform(0.55, 0.75))
    return prof, prof > 0.5, rng.choice([-1.0, 1.0]) * np.ones(3)


def _pit(rng: np.random.Generator, size: int, d: Difficulty):
    radius = max(1.9, rng.uniform(0.6, 0.8) * d.scale * size)
    centre = _place(rng, np.array([[-radius * 1.8] * 2, [radius * 1.8] * 2]), size, 1.0).mean(0)
    yy, xx = _grid(size)
    rr = np.hypot(yy - centre[0], xx - centre[1]) / radius
    core = np.clip(1.2 - rr**2 * 0.7, 0, 1) ** 1.5  # dark bowl, 1 at the centre
    rim = 0.35 * np.exp(-0.5 * ((rr - 1.25) / 0.25) ** 2)  # faint lighter rim
    prof = core - rim
    return prof, rr <= 1.0, -np.ones(3)


def _crack(rng: np.random.Generator, size: int, d: Difficulty):
    def walk(start: np.ndarray, heading: float, steps: int) -> np.ndarray:
        turns = np.cumsum(rng.normal(0, 0.35, steps)) * 0.6 + rng.normal(0, 0.5, steps)
        heading = heading + turns
        steps_yx = np.stack([np.sin(heading), np.cos(heading)], 1) * rng.uniform(0.8, 1.3, (steps, 1))
        return start + np.concatenate([[np.zeros(2)], np.cumsum(steps_yx, 0)])

    n = int(max(12, rng.uniform(4.0, 6.0) * d.scale * size))
    heading = rng.uniform(0, 2 * np.pi)
    trunk = walk(np.zeros(2), heading, n)
    parts = [trunk]
    if rng.random() < 0.5:  # a branch
        k = rng.integers(n // 3, n)
        parts.append(walk(trunk[k], heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1), max(4, n // 2)))
    allpts = _place(rng, np.concatenate(parts), size, margin=2.0)
    split = len(trunk)
    pieces = [_densify(allpts[:split])] + ([_densify(allpts[split:])] if len(parts) > 1 else [])
    prof = _line_profile(np.concatenate(pieces), size, width=rng.uniform(0.5, 0.65))
    return prof, prof > 0.5, -np.ones(3)


def _stain(rng: np.random.Generator, size: int, d: Difficulty):
    radius = max(2.5, rng.uniform(0.9, 1.3) * d.scale * size)
    centre = _place(rng, np.array([[-radius * 1.6] * 2, [radius * 1.6] * 2]), size, 1.0).mean(0)
    yy, xx = _grid(size)
    ang = np.arctan2(yy - centre[0], xx - centre[1])
    k = np.arange(1, 5)[:, None, None]
    wobble = (rng.normal(0, 0.12, (4, 1, 1)) * np.cos(k * ang + rng.uniform(0, 2 * np.pi, (4, 1, 1)))).sum(0)
    rr = np.hypot(yy - centre[0], xx - centre[1]) / (radius * (1 + wobble))
    prof = 1 / (1 + np.exp((rr - 1) * 6))  # soft edge, 0.5 at the boundary
    direction = rng.choice([-1.0, 1.0]) * 0.8 + 0.5 * rng.normal(0, 1, 3)
    return prof, prof > 0.5, direction


_DEFECT_FNS = {"scratch": _scratch, "pit": _pit, "crack": _crack, "stain": _stain}


# ----------------------------------------------------------------------------- public API
def _difficulty(difficulty: str | Difficulty) -> Difficulty:
    if isinstance(difficulty, Difficulty):
        return difficulty
    if difficulty not in DIFFICULTIES:
        allowed = ", ".join(DIFFICULTIES)
        raise ValueError(f"unknown difficulty {difficulty!r}; use one of {allowed} or a Difficulty")
    return DIFFICULTIES[difficulty]


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
    difficulty = _difficulty(difficulty)
    tex_rng, defect_rng, light_rng = (np.random.default_rng(s) for s in rng.integers(0, _MAX_SEED, 3))

    surface = _MATERIAL_FNS[material](tex_rng, size)
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        prof, mask, direction = _DEFECT_FNS[defect](defect_rng, size, difficulty)
        surface = surface * (1 + difficulty.contrast * prof[..., None] * direction)

    u, _ = _rotated(size, light_rng.uniform(0, 2 * np.pi))
    gradient = 1 + light_rng.uniform(-0.1, 0.1) * u / (np.abs(u).max() + 1e-8)
    image = surface * (lighting * gradient)[..., None]
    image = image + light_rng.normal(0, light_rng.uniform(0.01, 0.02), image.shape)
    image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return Surface(image=image, mask=mask, material=material, defect=defect, lighting=float(lighting))


def generate_surfaces(
    out_dir: str | Path,
    n_normal: int = 400,
    n_anomaly: int = 40,
    size: int = 64,
    dark_share: float = 0.15,
    seed: int = 0,
    difficulty: str | Difficulty = "default",
    materials: Sequence[str] | None = None,
    anomaly_dark_share: float | None = None,
) -> pd.DataFrame:
    """Write a synthetic surface data set under ``out_dir`` and return its ground truth.

    Normal image i has material ``materials[i % M]``; anomaly i has defect
    ``DEFECTS[i % 4]`` and material ``materials[(i // 4) % M]``. Each image has its
    own child seed (seed, kind, i), so image i is the same whatever the counts.
    Existing files with the same names are overwritten.
    """
    for name, n in (("n_normal", n_normal), ("n_anomaly", n_anomaly)):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer of at least 16 pixels, got {size!r}")
    if anomaly_dark_share is None:
        anomaly_dark_share = dark_share
    for name, share in (("dark_share", dark_share), ("anomaly_dark_share", anomaly_dark_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {share}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    diff = _difficulty(difficulty)
    mats = tuple(MATERIALS if materials is None else materials)
    bad = [m for m in mats if m not in MATERIALS]
    if bad or not mats:
        given = list(bad) or list(mats)
        raise ValueError(f"unknown or empty materials {given}; use some of {', '.join(MATERIALS)}")

    out = Path(out_dir)
    rows = []
    jobs = [("normal", i, mats[i % len(mats)], None, dark_share) for i in range(n_normal)]
    jobs += [
        ("anomaly", i, mats[(i // len(DEFECTS)) % len(mats)], DEFECTS[i % len(DEFECTS)], anomaly_dark_share)
        for i in range(n_anomaly)
    ]
    made: set[Path] = set()
    for label, i, material, defect, share in jobs:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(label == "anomaly", i)))
        lighting = sample_lighting(rng, share)
        surf = render_surface(rng, size, material, defect, lighting, diff)
        stem = f"{label}_{i:05d}"
        rel = Path(label) / (material if defect is None else defect) / f"{stem}.png"
        for folder in {(out / rel).parent} | ({out / "masks" / defect} if defect else set()):
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
        Image.fromarray(surf.image).save(out / rel)
        if defect is not None:
            Image.fromarray(surf.mask.astype(np.uint8) * 255).save(out / "masks" / defect / f"{stem}.png")
        rows.append(
            {
                "file": rel.as_posix(),
                "label": label,
                "defect": defect or "",
                "material": material,
                "lighting": surf.lighting,
                "brightness": brightness(surf.image),
            }
        )
    columns = ["file", "label", "defect", "material", "lighting", "brightness"]
    table = pd.DataFrame(rows, columns=columns)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "ground_truth.csv", index=False)
    # the lighting level as a recorded per-image factor (data.nuisance: lighting), as a camera log would give it
    table[["file", "lighting"]].rename(columns={"file": "path"}).to_csv(out / NUISANCE_FILE, index=False)
    return table
