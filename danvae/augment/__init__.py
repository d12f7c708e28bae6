"""Training-time image augmentation: synthetic and transplanted local defects with exact masks, and lighting.

Kept apart from :mod:`danvae.data.synthetic` (the embedded test-data generator) on purpose:
the defects here are generic families that know nothing of the defects a model is tested on,
and the user's own labelled defects moved onto other normals (:mod:`danvae.augment.transplant`).
"""
from danvae.augment.defects import FAMILIES, synthesize_defects
from danvae.augment.lighting import relight
from danvae.augment.transplant import DefectBank

__all__ = ["FAMILIES", "DefectBank", "synthesize_defects", "relight"]
