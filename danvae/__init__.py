"""DAn-VAE: visual surface inspection with disentangled anomaly detection.

    from danvae import Detector
    det = Detector("danvae", image_size=64).fit(images, is_anomaly)
    scores = det.score_samples(new_images)
"""
from __future__ import annotations

__all__ = ["Detector"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: data-only users (ingest workers, the validate stage) need not import torch.
    if name == "Detector":
        from danvae.detector import Detector

        return Detector
    raise AttributeError(f"module 'danvae' has no attribute {name!r}")
