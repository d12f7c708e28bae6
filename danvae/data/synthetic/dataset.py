"""A synthetic surface data set written to a folder (see the package's docstring for its layout)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from danvae.data.nuisance import NUISANCE_FILE
from danvae.data.synthetic.defects import DEFECTS, Difficulty, as_difficulty
from danvae.data.synthetic.surfaces import render_surface, sample_lighting
from danvae.data.synthetic.textures import MATERIALS
from danvae.images import brightness


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
    diff = as_difficulty(difficulty)
    mats = tuple(MATERIALS if materials is None else materials)
    bad = [m for m in mats if m not in MATERIALS]
    if bad or not mats:
        given = list(bad) or list(mats)
        raise ValueError(f"unknown or empty materials {given}; use some of {', '.join(MATERIALS)}")

    out = Path(out_dir)
    rows = []
    jobs: list[tuple[str, int, str, str | None, float]] = [
        ("normal", i, mats[i % len(mats)], None, dark_share) for i in range(n_normal)]
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
