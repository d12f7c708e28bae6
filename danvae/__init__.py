"""DAn-VAE: visual surface inspection with disentangled anomaly detection.

    from danvae import Detector, load_folder
    data = load_folder("data/surfaces", image_size=64)
    det = Detector("danvae", image_size=64).fit(data.images, data.is_anomaly, masks=data.masks, has_mask=data.has_mask)
    scores = det.decision_function(new_images)
"""
from __future__ import annotations

import os

__all__ = ["Detector", "load_folder", "OFFLINE_ENV"]
__version__ = "0.1.0"

# The tools' telemetry switches (see the stack notes), set before any of them is imported:
# whatever of danvae runs, it sends nothing anywhere.
OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
               "DO_NOT_TRACK": "1"}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)


def __getattr__(name: str):
    # Lazy: data-only users (ingest workers, the validate stage) need not import torch.
    if name == "Detector":
        from danvae.detector import Detector

        return Detector
    if name == "load_folder":
        from danvae.data.labelled import load_folder

        return load_folder
    raise AttributeError(f"module 'danvae' has no attribute {name!r}")
