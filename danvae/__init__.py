"""DAn-VAE: visual surface inspection with disentangled anomaly detection.

    from danvae import Detector
    det = Detector(model="danvae", image_size=64).fit(images, labels)
    scores = det.score_samples(new_images)
"""
from danvae.detector import Detector

__all__ = ["Detector"]
__version__ = "0.1.0"
