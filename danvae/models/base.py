"""The narrow interface the trainer and the scorer know every model by.

A model takes a :class:`Batch`, returns its loss terms from :meth:`loss`, and its
per-image anomaly scores from :meth:`scores`; ``decoder`` is what is frozen on
labelled-anomaly batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from danvae.models import scores as S

SCORE_KINDS = ("kl_zx", "llr_zx", "elbo", "recon", "recon_max")


@dataclass
class Batch:
    x: torch.Tensor  # B×C×H×W float in [0, 1]
    y: torch.Tensor  # B nuisance value in [0, 1] (meaningless where not y_known)
    y_known: torch.Tensor  # B bool: the nuisance label is available
    anomaly: torch.Tensor  # B bool: a labelled anomaly


@dataclass
class LossWeights:
    beta_x: float = 1.0
    beta_y: float = 3.0
    alpha: float = 1.0


class AnomalyVAE(nn.Module):
    """Base class: reconstruction helpers and the score table shared by all models."""

    name: str = "base"
    uses_anomalies: bool = True  # trained on labelled anomalies after warm-up
    anomaly_mean: float = 10.0
    smooth_kernel: int = 5

    decoder: nn.Module
    likelihood: nn.Module  # GaussianLikelihood: per-image loss and the scoring scale

    def loss(self, batch: Batch, weights: LossWeights) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def anomaly_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of the anomaly-relevant latent (z_x, or the whole latent)."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction from the posterior means."""
        raise NotImplementedError

    def latent_means(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior means of each latent part, by name (``z_x`` and, where split, ``z_y``)."""
        return {"z_x": self.anomaly_latent(x)[0]}

    def nuisance_kl(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """KL of the nuisance latent at scoring time (0 for models without one)."""
        return torch.zeros(x.shape[0], device=x.device)

    @torch.no_grad()
    def scores(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every score kind per image, and the per-pixel reconstruction-error map (B×H×W)."""
        mu, logvar = self.anomaly_latent(x)
        x_hat = self.reconstruct(x).float()
        err_map = S.error_map(x, x_hat)
        recon = err_map.flatten(1).sum(dim=1)
        kl_zx = S.kl_to_isotropic(mu.float(), logvar.float())
        out = {
            "kl_zx": kl_zx,
            "llr_zx": S.dual_prior_llr(mu.float(), self.anomaly_mean),
            "elbo": self.likelihood.score(recon) + kl_zx + self.nuisance_kl(x, y).float(),
            "recon": recon,
            "recon_max": S.smoothed_max(err_map, self.smooth_kernel),
        }
        return out, err_map
