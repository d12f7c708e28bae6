"""The training set as tensors: images decoded once, with labels, nuisance values and masks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TrainingData:
    """Training images decoded once: uint8 N×C×H×W plus per-image labels."""

    images: torch.Tensor
    y: torch.Tensor
    y_known: torch.Tensor
    anomaly: torch.Tensor
    masks: torch.Tensor | None = None  # N×H×W bool defect masks of labelled anomalies
    has_mask: torch.Tensor | None = None  # N bool: the image's mask is known
    y_measured: bool = True  # y is the image's brightness (crops and relit images are measured anew)

    @classmethod
    def from_arrays(cls, images_nhwc: np.ndarray, y: np.ndarray, anomaly: np.ndarray,
                    sup_ratio: float = 1.0, seed: int = 0, y_known: np.ndarray | None = None,
                    masks: np.ndarray | None = None, has_mask: np.ndarray | None = None,
                    y_measured: bool = True) -> "TrainingData":
        """Pack arrays; ``sup_ratio`` of the images (chosen by seed) keep their nuisance label.
        ``masks`` (N×H×W bool) with ``has_mask`` give the defect pixels of labelled anomalies.
        ``y_measured``: ``y`` is the brightness; False for a recorded factor (exposure, camera)."""
        n = len(images_nhwc)
        if y_known is None:
            rng = np.random.default_rng(seed)
            y_known = np.zeros(n, dtype=bool)
            y_known[rng.permutation(n)[: int(round(sup_ratio * n))]] = True
        images = torch.from_numpy(np.ascontiguousarray(np.asarray(images_nhwc, dtype=np.uint8).transpose(0, 3, 1, 2)))
        anomaly_t = torch.tensor(np.asarray(anomaly), dtype=torch.bool)
        masks_t = has_mask_t = None
        if masks is not None:
            masks_t = torch.from_numpy(np.ascontiguousarray(np.asarray(masks, dtype=bool)))
            known = np.ones(n, bool) if has_mask is None else np.asarray(has_mask, bool)
            has_mask_t = torch.tensor(known, dtype=torch.bool) & anomaly_t
        return cls(images, torch.tensor(np.asarray(y), dtype=torch.float32),
                   torch.tensor(np.asarray(y_known), dtype=torch.bool), anomaly_t, masks_t, has_mask_t, y_measured)

    def __len__(self) -> int:
        return len(self.images)
