"""The narrow interface the trainer and the scorer know every model by.

A model takes a :class:`Batch`, returns its loss terms from :meth:`loss`, and its
per-image anomaly scores from :meth:`scores`; ``decoder`` is what is frozen on
labelled-anomaly batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from danvae.models import score_maps as S
from danvae.models.anomaly_head import FOCAL_ALPHA, FOCAL_GAMMA, AnomalyHead
from danvae.models.likelihood import GaussianLikelihood
from danvae.models.self_similarity import self_dissimilarity_map


@dataclass
class Batch:
    x: torch.Tensor  # B×C×H×W float in [0, 1]
    y: torch.Tensor  # B nuisance value in [0, 1] (meaningless where not y_known)
    y_known: torch.Tensor  # B bool: the nuisance label is available
    anomaly: torch.Tensor  # B bool: a labelled anomaly
    mask: torch.Tensor | None = None  # B×H×W bool: known defect pixels (all False on a normal image)
    has_mask: torch.Tensor | None = None  # B bool: ``mask`` is known for this image (normals: True)
    target: torch.Tensor | None = None  # B×C×H×W: what to reconstruct (the clean image under a synthetic defect)
    unknown: torch.Tensor | None = None  # B×H×W bool: pixels whose clean value is unknown (no reconstruction target)
    drawn: torch.Tensor | None = None  # B bool: ``mask`` was drawn by hand (a labelled anomaly's, or transplanted)


@dataclass
class LossWeights:
    beta_x: float = 1.0
    beta_y: float = 3.0
    alpha: float = 1.0
    focal_gamma: float = FOCAL_GAMMA  # the anomaly head's focal loss: focusing power ...
    focal_alpha: float = FOCAL_ALPHA  # ... and weight of the defect pixels
    drawn_band: int = 2  # pixels around a hand-drawn mask the head learns nothing about ...
    drawn_share: float = 0.5  # ... and the share of its pixels taught as defect (see anomaly_head.drawn_mask_target)


class AnomalyVAE(nn.Module):
    """Base class: reconstruction helpers and the score table shared by all models."""

    name: str = "base"
    has_nuisance_latent: bool = False  # a z_y to decode with (decode_with_nuisance)
    uses_anomalies: bool = True  # trained on labelled anomalies after warm-up
    spatial: bool = False  # z_x is a latent map; the model has local score maps
    anomaly_mean: float = 10.0
    smooth_kernel: int = 5

    decoder: nn.Module
    likelihood: GaussianLikelihood  # per-image loss and the scoring scale

    def __init__(self):
        super().__init__()
        self.head: AnomalyHead | None = None  # the anomaly head, trained on defect masks (spatial models)

    def loss(self, batch: Batch, weights: LossWeights) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: Batch, weights: LossWeights) -> dict[str, torch.Tensor]:
        """The training loss terms (what DistributedDataParallel calls, so it can average gradients)."""
        return self.loss(batch, weights)

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
    def scores(self, x: torch.Tensor, y: torch.Tensor, dissimilarity: torch.Tensor | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Every kind of :data:`danvae.config.MODEL_SCORE_KINDS` per image, and the per-pixel maps (B×H×W) by kind.
        ``dissimilarity``: ``x``'s self-dissimilarity maps when already known (they do not
        depend on the model, so a caller scoring the same images again passes them)."""
        mu, logvar = self.anomaly_latent(x)
        x_hat = self.reconstruct(x).float()
        maps = {"recon_max": S.error_map(x, x_hat), "recon_norm_max": S.normalised_error_map(x, x_hat),
                "ssim_max": S.dissimilarity_map(x, x_hat),
                "selfsim_max": self_dissimilarity_map(x) if dissimilarity is None else dissimilarity}
        recon = maps["recon_max"].flatten(1).sum(dim=1)
        kl_zx = S.kl_to_isotropic(mu.float(), logvar.float())
        nan = torch.full_like(recon, float("nan"))
        out = {
            "kl_zx": kl_zx,
            "llr_zx": S.dual_prior_llr(mu.float(), self.anomaly_mean),
            "elbo": self.likelihood.score(self.likelihood.error(x, x_hat)) + kl_zx + self.nuisance_kl(x, y).float(),
            "recon": recon,
            **{k: S.smoothed_max(m, self.smooth_kernel) for k, m in maps.items()},
            "kl_zx_max": nan, "head_max": nan,  # a global latent has no map; no head
        }
        return out, maps

    def decode_with_nuisance(self, x: torch.Tensor, z_y: torch.Tensor) -> torch.Tensor:
        """``x`` decoded with its own ``z_x`` and the given ``z_y`` (models with a nuisance latent)."""
        raise NotImplementedError(f"model {self.name!r} has no nuisance latent")
