"""A second surface world, for the benchmark only: materials, defects, lighting and camera
that neither the embedded generator (``danvae/data/synthetic``) nor the training-time defect
synthesiser (``danvae/augment``) knows, written apart from both.

    from heldout_surfaces import HELDOUT_DEFECTS, HELDOUT_MATERIALS, render_heldout
    image, mask = render_heldout(np.random.default_rng(0), 64, "leather", "dent", lighting=0.8)

Why: a detector whose every design choice was measured on one generator may have been tuned
to it. Here the defects are of kinds the synthesiser has no family for (a dent seen only
through its shading, a smudge that removes texture but not brightness, a watermark ring, a
chipped coating, a stray fibre), the camera adds signal-dependent shot noise, vignetting, a
colour cast and JPEG compression, and the dark tail is darker and wider. Its parameters were
set by eye on rendered images before any detector was run on them, and are never tuned on
detection results: this world measures generalisation, it is not a training target.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates

HELDOUT_MATERIALS: tuple[str, ...] = ("leather", "perforated_metal", "marble", "carbon_twill", "granite")
HELDOUT_DEFECTS: tuple[str, ...] = ("dent", "smudge", "watermark", "chip", "fibre")


def _fbm(rng: np.random.Generator, size: int, octaves: int = 4, base: float = 8.0) -> np.ndarray:
    """Fractal noise: a sum of smoothed white noises, each octave half the scale and amplitude."""
    out = np.zeros((size, size))
    for o in range(octaves):
        sigma = base * size / 64 / 2**o
        layer = gaussian_filter(rng.standard_normal((size, size)), max(sigma, 0.5), mode="wrap")
        out += layer / (layer.std() + 1e-8) * 0.5**o
    return out / np.abs(out).max()


def _coords(size: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c, s = np.cos(theta), np.sin(theta)
    return c * xx + s * yy, -s * xx + c * yy


def _leather(rng: np.random.Generator, size: int) -> np.ndarray:
    n = int(rng.integers(40, 70) * (size / 64) ** 2)
    pts = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    d = np.sort(np.hypot(yy[..., None] - pts[:, 0], xx[..., None] - pts[:, 1]), axis=-1)
    crease = np.exp(-((d[..., 1] - d[..., 0]) / (0.9 * size / 64)) ** 2)  # valleys between grain cells
    dome = np.clip(1 - d[..., 0] / (1.2 * size / 64 * 4), 0, 1) ** 0.5
    g = 0.42 + 0.1 * dome - 0.16 * crease + 0.03 * _fbm(rng, size, 3, 10)
    colour = np.array([(0.55, 0.36, 0.22), (0.25, 0.22, 0.2), (0.62, 0.5, 0.38)][rng.integers(3)])
    return g[..., None] * colour / colour.max()


def _perforated_metal(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _coords(size, rng.uniform(-0.2, 0.2))
    pitch = rng.uniform(7.0, 10.0) * size / 64
    row = np.floor(v / pitch)
    uu = u + (row % 2) * pitch / 2  # staggered rows
    du = (uu % pitch) - pitch / 2
    dv = (v % pitch) - pitch / 2
    r = np.hypot(du, dv)
    hole = 1 / (1 + np.exp((r - 0.3 * pitch) / (0.25 * size / 64)))
    brushed = gaussian_filter(rng.standard_normal((size, size)), (0.3, 4.0 * size / 64))
    g = 0.62 + 0.04 * brushed / (brushed.std() + 1e-8) * 0.5 - 0.45 * hole
    return g[..., None] * np.array([0.95, 0.97, 1.0])


def _marble(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _coords(size, rng.uniform(0, np.pi))
    turb = np.abs(_fbm(rng, size, 5, 14)) * rng.uniform(6, 10)
    veins = np.abs(np.sin(2 * np.pi * u / (rng.uniform(18, 30) * size / 64) + turb)) ** rng.uniform(6, 14)
    g = 0.78 - 0.3 * veins + 0.03 * _fbm(rng, size, 4, 4)
    cast = np.array([(1.0, 1.0, 1.0), (1.0, 0.95, 0.9), (0.9, 0.95, 1.0)][rng.integers(3)])
    return g[..., None] * cast


def _carbon_twill(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _coords(size, rng.uniform(-0.3, 0.3))
    cell = rng.uniform(4.0, 6.0) * size / 64
    i, j = np.floor(u / cell), np.floor(v / cell)
    over = ((i + j) // 2) % 2 == 0  # 2/2 twill: the over/under pattern steps diagonally
    fu, fv = (u % cell) / cell, (v % cell) / cell
    sheen = np.where(over, np.sin(np.pi * fv), np.sin(np.pi * fu)) ** 2
    g = 0.12 + 0.32 * sheen + 0.02 * _fbm(rng, size, 2, 2)
    return g[..., None] * np.array([0.9, 0.92, 1.0])


def _granite(rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.array([(0.55, 0.5, 0.48), (0.4, 0.4, 0.42), (0.6, 0.45, 0.4)][rng.integers(3)])
    img = np.broadcast_to(base, (size, size, 3)).copy() * (1 + 0.06 * _fbm(rng, size, 3, 6))[..., None]
    palette = np.array([(0.1, 0.1, 0.1), (0.85, 0.82, 0.8), (0.45, 0.3, 0.28), (0.25, 0.25, 0.28)])
    grains = gaussian_filter(rng.random((size, size)), 0.8 * size / 64)
    labels = rng.integers(len(palette), size=(size, size))
    spots = grains > np.quantile(grains, 0.62)
    img[spots] = 0.5 * img[spots] + 0.5 * palette[labels[spots]]
    return gaussian_filter(img, (0.5, 0.5, 0))


MATERIAL_FNS = {"leather": _leather, "perforated_metal": _perforated_metal, "marble": _marble,
                "carbon_twill": _carbon_twill, "granite": _granite}


def _spot(rng: np.random.Generator, size: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to a random centre at least ``radius`` from the border."""
    m = min(radius + 2, size / 2 - 1)
    cy, cx = rng.uniform(m, size - m, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return yy - cy, xx - cx


def _dent(rng, img, size):
    """A shallow dent seen only through its shading: a bright and a dark lobe, no mean change."""
    r = rng.uniform(3.5, 7.0) * size / 64
    dy, dx = _spot(rng, size, 2 * r)
    a = rng.uniform(0, 2 * np.pi)
    bump = np.exp(-(dy**2 + dx**2) / (2 * r**2))
    shade = -(np.cos(a) * dx + np.sin(a) * dy) / r * bump  # the directional derivative of the bump
    out = img * (1 + rng.uniform(0.25, 0.4) * shade[..., None])
    return out, bump > 0.3


def _smudge(rng, img, size):
    """Texture wiped away in a soft patch: the local mean stays, the structure goes."""
    r = rng.uniform(4.0, 8.0) * size / 64
    dy, dx = _spot(rng, size, r)
    w = 1 + 0.4 * _fbm(rng, size, 2, 3)
    blob = np.clip(1.6 - np.hypot(dy / r, dx / (r * rng.uniform(0.6, 1.6))) * w, 0, 1)
    flat = gaussian_filter(img, (3.0 * size / 64, 3.0 * size / 64, 0))
    k = rng.uniform(0.6, 0.9) * blob[..., None]
    return img * (1 - k) + flat * k, blob > 0.3


def _watermark(rng, img, size):
    """A drying ring: a thin annulus a little darker and warmer than the surface."""
    r = rng.uniform(4.0, 9.0) * size / 64
    dy, dx = _spot(rng, size, r + 2)
    wob = r * (1 + 0.12 * _fbm(rng, size, 2, 4))
    ring = np.exp(-((np.hypot(dy, dx) - wob) / (1.0 * size / 64)) ** 2)
    tint = np.array([1.0, 0.93, 0.8]) * rng.uniform(0.72, 0.85)
    out = img * (1 - ring[..., None] * (1 - tint))
    return out, ring > 0.35


def _chip(rng, img, size):
    """A chipped coating: an irregular flake where a flat primer colour shows through."""
    r = rng.uniform(2.0, 4.5) * size / 64
    dy, dx = _spot(rng, size, 2 * r)
    theta = np.arctan2(dy, dx)
    edge = r * (1 + 0.35 * np.sin(3 * theta + rng.uniform(0, 6)) + 0.2 * np.sin(5 * theta + rng.uniform(0, 6)))
    flake = np.clip(edge - np.hypot(dy, dx) + 0.5, 0, 1)
    primer = img.mean(axis=(0, 1)) * rng.choice([0.6, 1.35]) * np.array([1.0, 1.0, 1.05])
    out = img * (1 - flake[..., None]) + primer * flake[..., None]
    return out, flake > 0.5


def _fibre(rng, img, size):
    """A stray fibre lying on the surface: a thin curve of its own colour."""
    n = 60
    length = rng.uniform(14, 28) * size / 64
    a = rng.uniform(0, np.pi)
    p0 = rng.uniform(0.2 * size, 0.8 * size, 2)
    p2 = p0 + length * np.array([np.sin(a), np.cos(a)])
    p1 = (p0 + p2) / 2 + rng.normal(0, length / 3, 2)
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    pts = np.clip(pts, 1, size - 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    d = np.sqrt(((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2).min(-1))
    line = np.exp(-((d / (0.55 * size / 64)) ** 2))
    colour = np.clip(img.mean(axis=(0, 1)) * rng.choice([0.45, 1.7]), 0, 1)
    out = img * (1 - 0.8 * line[..., None]) + 0.8 * colour * line[..., None]
    return out, line > 0.4


DEFECT_FNS = {"dent": _dent, "smudge": _smudge, "watermark": _watermark, "chip": _chip, "fibre": _fibre}


def sample_heldout_lighting(rng: np.random.Generator, dark_share: float) -> float:
    """Lighting level: U(0.6, 1.0) for most images, U(0.15, 0.4) with probability ``dark_share``."""
    return float(rng.uniform(0.15, 0.4) if rng.random() < dark_share else rng.uniform(0.6, 1.0))


def render_heldout(rng: np.random.Generator, size: int, material: str, defect: str | None,
                   lighting: float) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 H×W×3) and its defect mask (bool H×W): material, maybe a defect,
    then the camera: lighting with vignetting and a colour cast, shot and read noise, JPEG."""
    tex_rng, defect_rng, cam_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, 3))
    img = np.clip(MATERIAL_FNS[material](tex_rng, size), 0, 1)
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        img, mask = DEFECT_FNS[defect](defect_rng, img, size)
        img = np.clip(img, 0, 1)
    # a slight perspective wobble, so the texture is never exactly the generator's grid
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    shift = cam_rng.uniform(-0.6, 0.6, 2) * (size / 64)
    where = [yy + shift[0] * yy / size, xx + shift[1] * xx / size]
    img = np.stack([map_coordinates(img[..., c], where, order=1, mode="reflect") for c in range(3)], axis=-1)
    mask = map_coordinates(mask.astype(np.float64), where, order=1, mode="reflect") > 0.5
    cy, cx = cam_rng.uniform(0.2 * size, 0.8 * size, 2)
    vignette = 1 - cam_rng.uniform(0.1, 0.35) * ((yy - cy) ** 2 + (xx - cx) ** 2) / size**2
    cast = 1 + cam_rng.uniform(-0.08, 0.08, 3)
    signal = img * (lighting * vignette)[..., None] * cast
    electrons = cam_rng.uniform(200, 600)  # full-scale photon count: shot noise grows with the signal
    read = cam_rng.uniform(0.004, 0.01)
    # shot noise (its Gaussian limit, so that a defect-free twin draws the very same noise) and read noise
    sigma = np.sqrt(np.clip(signal, 0, None) / electrons + read**2)
    noisy = signal + sigma * cam_rng.standard_normal(signal.shape)
    pixels = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=int(cam_rng.integers(80, 96)))
    return np.asarray(Image.open(buf).convert("RGB")), mask
