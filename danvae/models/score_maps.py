"""Score maps and their per-image reductions, from a model's tensors (pure tensor functions).

Scoring images with a trained detector (batches, threshold, score kind) is :mod:`danvae.scoring`.
"""
from __future__ import annotations

import math

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


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """A B×H×W bool mask grown by ``radius`` pixels (a square neighbourhood)."""
    if radius == 0:
        return mask
    grown = F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)
    return grown[:, 0].bool()


# ---- local, lighting-insensitive maps ------------------------------------------------

BRIGHTNESS_EPS = 0.02


def image_brightness(x: torch.Tensor) -> torch.Tensor:
    """Mean HSV value (max over channels) per image of B×C×H×W in [0, 1]."""
    return x.amax(dim=1).flatten(1).mean(dim=1)


def normalise_brightness(x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` divided by its brightness (or ``level``), scaled so a mean image sits at 0.5."""
    level = image_brightness(x) if level is None else level
    return x * (0.5 / (level + BRIGHTNESS_EPS))[:, None, None, None]


def noise_level(x: torch.Tensor) -> torch.Tensor:
    """Immerkær's fast estimate of the Gaussian noise σ of each image of B×C×H×W (on its grey
    image): the mean absolute response to a Laplacian difference that cancels smooth structure."""
    grey = x.float().mean(dim=1, keepdim=True)
    kernel = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], device=x.device)
    response = F.conv2d(grey, kernel.view(1, 1, 3, 3)).abs()
    return response.flatten(1).mean(dim=1) * (math.pi / 2) ** 0.5 / 6.0


def normalised_error_map(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared error of image and reconstruction, both divided by the image's brightness: B×H×W."""
    level = image_brightness(x)
    return (normalise_brightness(x, level) - normalise_brightness(x_hat, level)).pow(2).sum(dim=1)


def dissimilarity_map(x: torch.Tensor, x_hat: torch.Tensor, window: int = 7) -> torch.Tensor:
    """1 − SSIM of the grey images, per pixel (B×H×W): compares local structure, so a change
    of gain alone barely moves it."""
    a, b = x.float().mean(dim=1, keepdim=True), x_hat.float().mean(dim=1, keepdim=True)

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, window, stride=1, padding=window // 2, count_include_pad=False)

    mu_a, mu_b = pool(a), pool(b)
    var_a, var_b = pool(a * a) - mu_a**2, pool(b * b) - mu_b**2
    cov = pool(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return (1 - ssim)[:, 0].clamp(min=0)


def upsample_map(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A B×h×w map resized (bilinear) to B×H×W."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
