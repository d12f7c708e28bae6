"""Two ways of keeping brightness out of ``z_x``, both on its pooled posterior mean.

    leak = linear_leak(mu_x.mean(dim=(2, 3)), batch.y, keep)   # brightness variance z_x explains
    y_adv = adversary(reverse_gradient(mu_x.mean(dim=(2, 3))))  # an adversary's guess, gradient reversed

The adversary (Ganin & Lempitsky 2015) chases any function of ``z_x`` that predicts
brightness, but the encoder only has to fool the adversary it has now, and brightness
can stay linearly readable from ``z_x`` (held-out R² 0.45 on one seed of four). The
linear leak is what that R² measures, per batch and per channel: no adversary to fool,
it is zero only where each channel of pooled ``z_x`` is uncorrelated with brightness.
"""
from __future__ import annotations

import torch

MIN_IMAGES = 4  # fewer known brightness values than this in a batch: no estimate


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


def linear_leak(features: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Σ over channels of corr(feature, y)² · var(y) among the ``keep`` rows of a B×d
    ``features``: the variance of ``y`` each channel explains linearly, in the units of a
    squared error of ``y``. 0 when fewer than ``MIN_IMAGES`` rows are kept."""
    f, t = features[keep].float(), y[keep].float()
    if len(t) < MIN_IMAGES:
        return features.sum() * 0.0
    f = f - f.mean(dim=0)
    t = t - t.mean()
    covariance = (f * t[:, None]).mean(dim=0)
    variance = f.pow(2).mean(dim=0)
    return (covariance.pow(2) / (variance + 1e-8)).sum()
