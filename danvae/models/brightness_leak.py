"""Two ways of keeping brightness out of ``z_x``, both on its pooled posterior mean.

    y_adv = adversary(reverse_gradient(pooled))   # an adversary's guess, its gradient reversed
    leak = LinearLeak(d)(pooled, batch.y, keep)   # the brightness variance z_x explains linearly

The adversary (Ganin & Lempitsky 2015) chases any function of ``z_x`` that predicts
brightness, but the encoder only has to fool the adversary it has now: measured, the
adversary's error sat at the variance of brightness (fooled) while a linear regression
still read brightness from pooled ``z_x`` at held-out R² 0.45, through a difference of
two channels that each correlated with it by only ±0.4.

:class:`LinearLeak` measures what that R² measures: ``c^T Σ⁻¹ c``, with ``c`` the
covariance of the pooled ``z_x`` channels with brightness and ``Σ`` their covariance.
One batch holds too few normals to estimate it (with 16 images and 8 channels, pure
noise explains half the variance), so both are running averages over batches; the
gradient flows through the batch's share as if it were the whole average, so it pushes
the encoder against the correlation seen over many batches, not one batch's noise.
"""
from __future__ import annotations

import torch
from torch import nn

MIN_IMAGES = 4  # fewer kept rows than this in a batch: the running estimate is left as it is


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def reverse_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged; the gradient flowing back through it is negated."""
    out: torch.Tensor = _ReverseGradient.apply(x)
    return out


class LinearLeak(nn.Module):
    """The variance of ``y`` that a linear regression on ``features`` explains, from
    running (exponentially weighted, bias-corrected) covariances: ``R² · var(y)``, in the
    units of a squared error of ``y``. Updates its running estimate when called in
    training mode; in evaluation mode it reads the batch alone."""

    cross: torch.Tensor
    covariance: torch.Tensor
    weight: torch.Tensor

    def __init__(self, dim: int, decay: float = 0.9):
        super().__init__()
        self.decay = decay
        self.register_buffer("cross", torch.zeros(dim))  # running Cov(feature, y)
        self.register_buffer("covariance", torch.zeros(dim, dim))  # running Cov(features)
        self.register_buffer("weight", torch.zeros(()))  # Σ of decay^k: the bias correction

    def forward(self, features: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        f, t = features[keep].float(), y[keep].float()
        enough = len(t) >= MIN_IMAGES
        if enough:
            f = f - f.mean(dim=0)
            t = t - t.mean()
            cross = (f * t[:, None]).mean(dim=0)
            covariance = (f.T @ f / len(t)).detach()
        if not self.training:
            if not enough:
                return features.sum() * 0.0
            return self._explained(cross, covariance)
        with torch.no_grad():
            if enough:
                self.cross.mul_(self.decay).add_(cross.detach(), alpha=1 - self.decay)
                self.covariance.mul_(self.decay).add_(covariance, alpha=1 - self.decay)
                self.weight.mul_(self.decay).add_(1 - self.decay)
        if float(self.weight) == 0:
            return features.sum() * 0.0
        running = self.cross / self.weight
        if enough:  # the running value, with the gradient of the batch's covariance (straight through)
            running = running + (cross - cross.detach())
        return self._explained(running, self.covariance / self.weight)

    @staticmethod
    def _explained(cross: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
        ridge = 1e-3 * covariance.diagonal().mean().clamp(min=1e-8)
        eye = torch.eye(len(cross), device=cross.device, dtype=cross.dtype)
        return cross @ torch.linalg.solve(covariance + ridge * eye, cross)
