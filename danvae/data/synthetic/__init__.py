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
from danvae.data.synthetic.dataset import generate_surfaces
from danvae.data.synthetic.defects import DEFECTS, DIFFICULTIES, Difficulty, as_difficulty
from danvae.data.synthetic.surfaces import Surface, render_surface, sample_lighting
from danvae.data.synthetic.textures import MATERIALS
from danvae.images import brightness

__all__ = [
    "DEFECTS",
    "DIFFICULTIES",
    "MATERIALS",
    "Difficulty",
    "Surface",
    "as_difficulty",
    "brightness",
    "generate_surfaces",
    "render_surface",
    "sample_lighting",
]
