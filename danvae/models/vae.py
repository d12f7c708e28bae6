"""Global baselines with one undivided latent vector: ``vae-global`` (normals only) and
``dpvae-global`` (dual prior).

    vae = VAE(channels=3, image_size=64, latent_dim=32)
    dpvae = VAE(channels=3, image_size=64, latent_dim=32, dual_prior=True)

DP-VAE follows Daniel, Kurutach & Tamar (2019): labelled anomalies are pushed toward
the prior ``N(m·1, I)`` so they leave the normal region of the latent.
"""
from __future__ import annotations

import torch

from danvae.models.base import AnomalyVAE, Batch, LossWeights
from danvae.models.blocks import ConvDecoder, ConvEncoder, reparameterize
from danvae.models.kl import kl_to_isotropic
from danvae.models.likelihood import GaussianLikelihood
from danvae.models.score_maps import sse


class VAE(AnomalyVAE):
    def __init__(self, channels: int, image_size: int, latent_dim: int = 32, dual_prior: bool = False,
                 anomaly_mean: float = 10.0, smooth_kernel: int = 5, likelihood: str = "sse"):
        super().__init__()
        self.name = "dpvae-global" if dual_prior else "vae-global"
        self.uses_anomalies = dual_prior
        self.latent_dim = latent_dim
        self.anomaly_mean = anomaly_mean
        self.smooth_kernel = smooth_kernel
        self.likelihood = GaussianLikelihood(likelihood)
        self.encoder = ConvEncoder(channels, image_size, latent_dim)
        self.decoder = ConvDecoder(channels, image_size, latent_dim)

    def anomaly_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)[0])

    def loss(self, batch: Batch, weights: LossWeights) -> dict[str, torch.Tensor]:
        mu, logvar = self.encoder(batch.x)
        x_hat = self.decoder(reparameterize(mu, logvar))
        recon_nll, _ = self.likelihood(batch.x, x_hat)
        prior_mean = batch.anomaly.float().unsqueeze(1) * self.anomaly_mean if self.uses_anomalies else 0.0
        kl = kl_to_isotropic(mu.float(), logvar.float(), prior_mean)
        total = recon_nll.mean() + weights.beta_x * kl.mean()
        zero = torch.zeros((), device=total.device)
        recon = sse(batch.x.float(), x_hat.detach().float()).mean()
        return {"total": total, "recon": recon, "kl_x": kl.mean(), "kl_y": zero, "aux": zero}
