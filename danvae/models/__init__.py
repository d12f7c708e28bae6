"""DAn-VAE and its baselines behind one constructor.

    model = build_model(ModelConfig(name="danvae", zx_dim=24, zy_dim=8), channels=3, image_size=64)
"""
from __future__ import annotations

from danvae.config import ModelConfig
from danvae.models.base import SCORE_KINDS, AnomalyVAE, Batch, LossWeights
from danvae.models.danvae import DAnVAE
from danvae.models.vae import VAE

__all__ = ["build_model", "AnomalyVAE", "Batch", "LossWeights", "DAnVAE", "VAE", "SCORE_KINDS"]


def build_model(cfg: ModelConfig, channels: int, image_size: int) -> AnomalyVAE:
    common = dict(channels=channels, image_size=image_size, anomaly_mean=cfg.anomaly_mean,
                  smooth_kernel=cfg.smooth_kernel, likelihood=cfg.likelihood)
    if cfg.name == "danvae":
        return DAnVAE(zx_dim=cfg.zx_dim, zy_dim=cfg.zy_dim, **common)
    return VAE(latent_dim=cfg.zx_dim + cfg.zy_dim, dual_prior=cfg.name == "dpvae", **common)
