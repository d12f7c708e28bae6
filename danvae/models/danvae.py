"""DAn-VAE, global (``danvae-global``, the thesis reference): a VAE whose latent splits into anomaly-relevant ``z_x`` and nuisance ``z_y``.

    model = DAnVAE(channels=3, image_size=64, zx_dim=24, zy_dim=8)
    terms = model.loss(batch, LossWeights(beta_x=1, beta_y=3, alpha=288))
    scores, heatmap = model.scores(x, y)

``q(z_x|x)`` and ``q(z_y|x)`` are separate encoders; ``p(z_y|y)`` is a conditional prior
on the nuisance label ``y`` (brightness by default); ``q(y|z_y)`` an auxiliary regressor.
Labelled anomalies get the dual prior ``p(z_x) = N(m·1, I)``.
"""
from __future__ import annotations

import torch
from torch import nn

from danvae.models.base import AnomalyVAE, Batch, LossWeights
from danvae.models.blocks import ConvDecoder, ConvEncoder, reparameterize
from danvae.models.kl import kl_between, kl_to_isotropic
from danvae.models.likelihood import GaussianLikelihood
from danvae.models.score_maps import sse


class DAnVAE(AnomalyVAE):
    name = "danvae-global"
    has_nuisance_latent = True

    def __init__(self, channels: int, image_size: int, zx_dim: int = 24, zy_dim: int = 8,
                 anomaly_mean: float = 10.0, prior_hidden: int = 32, smooth_kernel: int = 5,
                 likelihood: str = "sse"):
        super().__init__()
        self.zx_dim, self.zy_dim = zx_dim, zy_dim
        self.anomaly_mean = anomaly_mean
        self.smooth_kernel = smooth_kernel
        self.likelihood = GaussianLikelihood(likelihood)
        self.encoder_x = ConvEncoder(channels, image_size, zx_dim)
        self.encoder_y = ConvEncoder(channels, image_size, zy_dim)
        self.decoder = ConvDecoder(channels, image_size, zx_dim + zy_dim)
        self.prior_y = nn.Sequential(nn.Linear(1, prior_hidden), nn.ReLU(), nn.Linear(prior_hidden, 2 * zy_dim))
        self.regressor = nn.Sequential(nn.ReLU(), nn.Linear(zy_dim, 1), nn.Sigmoid())

    def conditional_prior(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.prior_y(y.view(-1, 1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def anomaly_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder_x(x)

    def nuisance_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder_y(x)

    def latent_means(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z_x": self.encoder_x(x)[0], "z_y": self.encoder_y(x)[0]}

    def decode(self, z_x: torch.Tensor, z_y: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z_x, z_y], dim=-1))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder_x(x)[0], self.encoder_y(x)[0])

    def decode_with_nuisance(self, x: torch.Tensor, z_y: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder_x(x)[0], z_y)

    def nuisance_kl(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu_y, logvar_y = self.encoder_y(x)
        p_mu, p_logvar = self.conditional_prior(y)
        return kl_between(mu_y.float(), logvar_y.float(), p_mu.float(), p_logvar.float())

    def loss(self, batch: Batch, weights: LossWeights) -> dict[str, torch.Tensor]:
        mu_x, logvar_x = self.encoder_x(batch.x)
        mu_y, logvar_y = self.encoder_y(batch.x)
        x_hat = self.decode(reparameterize(mu_x, logvar_x), reparameterize(mu_y, logvar_y))
        mu_x, logvar_x, mu_y, logvar_y = (t.float() for t in (mu_x, logvar_x, mu_y, logvar_y))

        recon_nll, precision = self.likelihood(batch.x, x_hat)
        prior_mean = batch.anomaly.float().unsqueeze(1) * self.anomaly_mean
        kl_x = kl_to_isotropic(mu_x, logvar_x, prior_mean)

        p_mu, p_logvar = self.conditional_prior(batch.y)
        known = batch.y_known.unsqueeze(1)
        p_mu = torch.where(known, p_mu.float(), torch.zeros_like(mu_y))
        p_logvar = torch.where(known, p_logvar.float(), torch.zeros_like(logvar_y))
        kl_y = kl_between(mu_y, logvar_y, p_mu, p_logvar)

        z_y = reparameterize(mu_y, logvar_y)
        y_hat = self.regressor(z_y).squeeze(1).float()
        n_known = batch.y_known.sum()
        # Mean over the images that carry y (the reference's α / sup_ratio over the batch).
        aux = torch.where(batch.y_known, (batch.y - y_hat).pow(2), torch.zeros_like(y_hat)).sum() / n_known.clamp(min=1)

        total = (recon_nll.mean() + weights.beta_x * kl_x.mean() + weights.beta_y * kl_y.mean()
                 + weights.alpha * precision * aux)
        recon = sse(batch.x.float(), x_hat.detach().float()).mean()
        return {"total": total, "recon": recon, "kl_x": kl_x.mean(), "kl_y": kl_y.mean(), "aux": aux}
