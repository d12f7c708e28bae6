"""The decoder's Gaussian likelihood of an image, as a loss per image.

- ``sse``: fixed unit variance, the reference: the loss is the sum of squared errors.
  On images in [0, 1] this weighs reconstruction so lightly against the KL terms that
  the decoder often collapses to the mean colour of the data set.
- ``calibrated``: the variance is the one that maximises the likelihood, the batch's
  mean squared error (the "optimal σ" of Rybkin, Daniilidis & Levine 2021, σ-VAE), so
  the loss is ``SSE / (2σ²) + D/2 · log σ²``. A running σ² is kept for scoring.
- ``relative``: calibrated, on the image and its reconstruction divided by the image's
  brightness: a pixel's σ scales with the lighting, so a dark image's errors weigh as
  much as a bright one's instead of a (brightness)² share of them.

Each returns the per-image loss and the weight ``1/(2σ²)`` applied to squared errors, so
that other terms defined on the squared-error scale (the auxiliary brightness
regression) keep their reference balance with reconstruction.
"""
from __future__ import annotations

import torch
from torch import nn

from danvae.models.score_maps import image_brightness, normalise_brightness, sse

MIN_VARIANCE = 1e-3  # σ ≥ 0.03 (≈ 8 grey levels, about sensor noise): keeps the weight bounded


class GaussianLikelihood(nn.Module):
    variance: torch.Tensor  # a buffer: the running σ² of a pixel's error

    def __init__(self, kind: str = "sse", momentum: float = 0.1):
        super().__init__()
        if kind not in ("sse", "calibrated", "relative"):
            raise ValueError(f"likelihood must be 'sse', 'calibrated' or 'relative', got {kind!r}")
        self.kind = kind
        self.momentum = momentum
        self.register_buffer("variance", torch.tensor(0.5))  # 0.5 makes 1/(2σ²) = 1, the sse scale

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, float | torch.Tensor]:
        err = self.error(x, x_hat)
        if self.kind == "sse":
            return err, 1.0
        n_values = x[0].numel()
        variance = (err.detach().mean() / n_values).clamp(min=MIN_VARIANCE)
        if self.training:
            self.variance.lerp_(variance, self.momentum)
        weight = 0.5 / variance
        return err * weight + 0.5 * n_values * torch.log(variance), weight

    def error(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Per-image squared error in this likelihood's units (``relative``: of the brightness-normalised pair)."""
        x, x_hat = x.float(), x_hat.float()
        if self.kind == "relative":
            level = image_brightness(x)
            x, x_hat = normalise_brightness(x, level), normalise_brightness(x_hat, level)
        return sse(x, x_hat)

    def score(self, err: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood (up to a constant) of per-image squared errors at the running σ²."""
        if self.kind == "sse":
            return err
        # The log σ² term is the same for every image, so it does not change a ranking.
        return err * (0.5 / self.variance.clamp(min=MIN_VARIANCE))
