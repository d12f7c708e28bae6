"""The defects drawn onto a surface (scratch, pit, crack, stain): each returns its intensity
profile, its pixel mask and its colour direction. ``Difficulty`` sets their size and contrast."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from danvae.data.synthetic.textures import grid


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
DEFECTS: tuple[str, ...] = ("scratch", "pit", "crack", "stain")


def as_difficulty(difficulty: str | Difficulty) -> Difficulty:
    """A Difficulty, or the one named in DIFFICULTIES."""
    if isinstance(difficulty, Difficulty):
        return difficulty
    if difficulty not in DIFFICULTIES:
        allowed = ", ".join(DIFFICULTIES)
        raise ValueError(f"unknown difficulty {difficulty!r}; use one of {allowed} or a Difficulty")
    return DIFFICULTIES[difficulty]


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
    yy, xx = grid(size)
    rr = np.hypot(yy - centre[0], xx - centre[1]) / radius
    core = np.clip(1.2 - rr**2 * 0.7, 0, 1) ** 1.5  # dark bowl, 1 at the centre
    rim = 0.35 * np.exp(-0.5 * ((rr - 1.25) / 0.25) ** 2)  # faint lighter rim
    prof = core - rim
    return prof, rr <= 1.0, -np.ones(3)


def _crack(rng: np.random.Generator, size: int, d: Difficulty):
    def walk(start: np.ndarray, heading: float, steps: int) -> np.ndarray:
        turns = np.cumsum(rng.normal(0, 0.35, steps)) * 0.6 + rng.normal(0, 0.5, steps)
        headings = heading + turns
        steps_yx = np.stack([np.sin(headings), np.cos(headings)], 1) * rng.uniform(0.8, 1.3, (steps, 1))
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
    yy, xx = grid(size)
    ang = np.arctan2(yy - centre[0], xx - centre[1])
    k = np.arange(1, 5)[:, None, None]
    wobble = (rng.normal(0, 0.12, (4, 1, 1)) * np.cos(k * ang + rng.uniform(0, 2 * np.pi, (4, 1, 1)))).sum(0)
    rr = np.hypot(yy - centre[0], xx - centre[1]) / (radius * (1 + wobble))
    prof = 1 / (1 + np.exp((rr - 1) * 6))  # soft edge, 0.5 at the boundary
    direction = rng.choice([-1.0, 1.0]) * 0.8 + 0.5 * rng.normal(0, 1, 3)
    return prof, prof > 0.5, direction


DEFECT_FNS = {"scratch": _scratch, "pit": _pit, "crack": _crack, "stain": _stain}
