"""Closed-form KL divergences between diagonal Gaussians, summed over latent dimensions.

All functions return one value per sample (shape ``[batch]``).
"""
from __future__ import annotations

import torch


def kl_to_isotropic(mu: torch.Tensor, logvar: torch.Tensor, mean: torch.Tensor | float = 0.0) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(mean·1, I)) = ½ Σ (σ² + (μ − m)² − 1 − log σ²)."""
    return 0.5 * (logvar.exp() + (mu - mean).pow(2) - 1.0 - logvar).sum(dim=-1)


def kl_between(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, exp(logvar_q)) ‖ N(mu_p, exp(logvar_p)))."""
    return 0.5 * (
        logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0
    ).sum(dim=-1)


def dual_prior_llr(mu: torch.Tensor, anomaly_mean: float) -> torch.Tensor:
    """E_q[log N(z; m·1, I) − log N(z; 0, I)] = m Σ μ − ½ m² d (the variances cancel)."""
    d = mu.shape[-1]
    return anomaly_mean * mu.sum(dim=-1) - 0.5 * anomaly_mean**2 * d
