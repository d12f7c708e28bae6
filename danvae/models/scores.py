"""Per-image anomaly score terms computed from model outputs (pure tensor functions)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from danvae.models.kl import dual_prior_llr, kl_to_isotropic

__all__ = ["error_map", "smoothed_max", "kl_to_isotropic", "dual_prior_llr", "sse"]


def sse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors over pixels, one value per image."""
    return (x - x_hat).pow(2).flatten(1).sum(dim=1)


def error_map(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error summed over channels: B×H×W."""
    return (x - x_hat).pow(2).sum(dim=1)


def smoothed_max(err_map: torch.Tensor, kernel: int) -> torch.Tensor:
    """Max of the box-smoothed error map: a small defect's local error, not drowned by the image sum."""
    k = max(1, kernel | 1)
    smooth = F.avg_pool2d(err_map.unsqueeze(1), k, stride=1, padding=k // 2, count_include_pad=False)
    return smooth.flatten(1).max(dim=1).values
