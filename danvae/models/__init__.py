"""DAn-VAE and its baselines behind one constructor.

    model = build_model(ModelConfig(name="danvae", zx_dim=8, zy_dim=8), channels=3, image_size=64)

``danvae``, ``vae`` and ``dpvae`` are spatial (a latent map, an anomaly head);
``danvae-global``, ``vae-global`` and ``dpvae-global`` are the thesis's global-vector models.
"""
from __future__ import annotations

from typing import Any

from danvae.config import MODEL_SCORE_KINDS, SCORE_KINDS, ModelConfig
from danvae.models.base import AnomalyVAE, Batch, LossWeights
from danvae.models.danvae import DAnVAE
from danvae.models.spatial import SpatialDAnVAE, SpatialVAE
from danvae.models.vae import VAE

__all__ = ["build_model", "AnomalyVAE", "Batch", "LossWeights", "DAnVAE", "VAE", "SpatialDAnVAE", "SpatialVAE",
           "SCORE_KINDS", "MODEL_SCORE_KINDS"]


def build_model(cfg: ModelConfig, channels: int, image_size: int) -> AnomalyVAE:
    common: dict[str, Any] = dict(channels=channels, image_size=image_size, anomaly_mean=cfg.anomaly_mean,
                  smooth_kernel=cfg.smooth_kernel, likelihood=cfg.resolved_likelihood())
    spatial: dict[str, Any] = dict(top_k=cfg.top_k, head=cfg.head, head_noise=cfg.head_noise,
                                   head_resolution=cfg.head_resolution, heads=cfg.heads)
    if cfg.name == "danvae":
        return SpatialDAnVAE(zx_dim=cfg.zx_dim, zy_dim=cfg.zy_dim, adversary=cfg.adversary,
                             decorrelation=cfg.decorrelation, **common, **spatial)
    if cfg.name in ("vae", "dpvae"):
        return SpatialVAE(latent_dim=cfg.zx_dim, dual_prior=cfg.name == "dpvae", **common, **spatial)
    if cfg.name == "danvae-global":
        return DAnVAE(zx_dim=cfg.zx_dim, zy_dim=cfg.zy_dim, **common)
    return VAE(latent_dim=cfg.zx_dim + cfg.zy_dim, dual_prior=cfg.name == "dpvae-global", **common)
