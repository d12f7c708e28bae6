"""Spatial DAn-VAE and the spatial VAE / DP-VAE baselines.

    model = SpatialDAnVAE(channels=3, image_size=64, zx_channels=8, zy_dim=8)
    terms = model.loss(batch, LossWeights(beta_x=1, beta_y=3, alpha=288))
    scores, maps = model.scores(x, y)       # per-image score kinds, per-pixel maps by kind

DAn-VAE, spatial: ``z_x`` is a Gaussian *map* (one ``zx_channels`` vector per 4×4 cell),
read from the image divided by its brightness, so lighting cannot reach it; ``z_y`` is a
global vector with the conditional prior ``p(z_y|y)`` and the regressor ``q(y|z_y)``;
the decoder reads the ``z_x`` map and is modulated by ``z_y`` (FiLM), so brightness
enters the reconstruction only through ``z_y``. Labelled anomalies get the dual prior per
location: mean ``m`` inside a known mask, 0 elsewhere; with no mask, ``m`` on the ``top_k``
share of locations whose posterior is already farthest from the normal prior.

An :class:`~danvae.models.anomaly_head.AnomalyHead` on the normalised image next to its
normalised reconstruction is trained on defect masks (labelled and synthetic); its
smoothed maximum is the ``head_max`` score.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danvae.models import score_maps as S
from danvae.models.anomaly_head import (FOCAL_ALPHA, FOCAL_GAMMA, AnomalyHead, drawn_mask_target, focal_loss,
                                        top_k_mean)
from danvae.models.base import AnomalyVAE, Batch, LossWeights
from danvae.models.blocks import n_downsamples, reparameterize
from danvae.models.brightness_leak import LinearLeak, reverse_gradient
from danvae.models.kl import kl_between
from danvae.models.likelihood import GaussianLikelihood
from danvae.models.self_similarity import self_dissimilarity_map
from danvae.models.spatial_blocks import FiLMDecoder, GlobalEncoder, MapEncoder

NOISE_SCALE = 0.02  # noise σ of a typical brightness-normalised image (0.018; 0.028 in the darkest fifth, measured)


def kl_map(mu: torch.Tensor, logvar: torch.Tensor, prior_mean: torch.Tensor | float = 0.0) -> torch.Tensor:
    """KL(q ‖ N(mean, I)) per location of B×d×h×w maps: B×h×w."""
    return 0.5 * (logvar.exp() + (mu - prior_mean).pow(2) - 1.0 - logvar).sum(dim=1)


def dual_prior_means(batch: Batch, kl_normal: torch.Tensor, anomaly_mean: float, top_k: float) -> torch.Tensor:
    """Prior mean per location (B×1×h×w): ``m`` where a labelled anomaly is (its mask, or
    its ``top_k`` most deviant locations without one), 0 elsewhere and on normal images."""
    b, h, w = kl_normal.shape
    inside = torch.zeros(b, h, w, dtype=torch.bool, device=kl_normal.device)
    if batch.mask is not None and batch.has_mask is not None:  # the trainer sets both or neither
        cells = F.adaptive_max_pool2d(batch.mask.float()[:, None], (h, w))[:, 0] > 0
        inside |= cells & (batch.anomaly & batch.has_mask)[:, None, None]
    unmasked = batch.anomaly & ~batch.has_mask if batch.has_mask is not None else batch.anomaly
    if unmasked.any():
        k = max(1, int(round(top_k * h * w)))
        top = kl_normal.detach().flatten(1).topk(k, dim=1).indices
        chosen = torch.zeros(b, h * w, dtype=torch.bool, device=kl_normal.device).scatter_(1, top, True)
        inside |= chosen.view(b, h, w) & unmasked[:, None, None]
    return (inside.float() * anomaly_mean)[:, None]


class _SpatialBase(AnomalyVAE):
    """What the spatial models share: the head, its loss, and the local score maps."""

    spatial = True

    def _init_common(self, channels: int, anomaly_mean: float, smooth_kernel: int, likelihood: str,
                     top_k: float, head: bool, head_tta: bool = True, head_noise: bool = False,
                     head_resolution: str = "half") -> None:
        self.head_tta = head_tta
        self.head_noise = head_noise
        self.anomaly_mean = anomaly_mean
        self.smooth_kernel = smooth_kernel
        self.top_k = top_k
        self.likelihood = GaussianLikelihood(likelihood)
        self.head = (AnomalyHead(channels, context=int(head_noise), full_resolution=head_resolution == "full")
                     if head else None)
        # further heads, averaged with the first; built by _add_heads once the VAE is, so the
        # VAE's initial weights do not depend on how many heads there are
        self.extra_heads = nn.ModuleList()
        self._head_shape = (channels, int(head_noise), head_resolution == "full")

    def _add_heads(self, heads: int) -> None:
        if self.head is not None:
            channels, context, full = self._head_shape
            self.extra_heads.extend(AnomalyHead(channels, context=context, full_resolution=full)
                                    for _ in range(heads - 1))

    def _all_heads(self) -> list[AnomalyHead]:
        if self.head is None:
            raise RuntimeError(f"{self.name} was built without an anomaly head (model.head: false)")
        return [self.head, *self.extra_heads]

    # The interface each spatial model implements (SpatialDAnVAE, SpatialVAE), declared so the
    # shared scoring and loss code below is typed; the base class itself is never built.
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(mean and log-variance of the ``z_x`` map, what ``decode_from`` needs besides ``z_x``)."""
        raise NotImplementedError

    def decode_from(self, mu_x: torch.Tensor, extra: Any) -> torch.Tensor:
        """The reconstruction from a ``z_x`` map and what ``encode`` returned beside it."""
        raise NotImplementedError

    def _head_logits(self, x: torch.Tensor, x_hat: torch.Tensor, dissimilarity: torch.Tensor | None = None
                     ) -> list[torch.Tensor]:
        """Each head's per-pixel defect logits (B×H×W each)."""
        heads = self._all_heads()
        level = S.image_brightness(x)
        if dissimilarity is None:
            dissimilarity = self_dissimilarity_map(x)
        x_norm = S.normalise_brightness(x, level)
        x_hat_norm = S.normalise_brightness(x_hat.detach(), level)
        # the noise of the normalised image (loud in dark images), centred near 0 for the first layer
        context = (S.noise_level(x_norm) / NOISE_SCALE - 1.0).clamp(-1.0, 4.0)[:, None] if self.head_noise else None
        return [head(x_norm, x_hat_norm, dissimilarity, context) for head in heads]

    def _head_probability(self, x: torch.Tensor, x_hat: torch.Tensor, dissimilarity: torch.Tensor | None = None
                          ) -> torch.Tensor:
        """The head's defect probability per pixel, averaged over the image and its mirror
        images (a mirrored normal surface is still a normal surface; a texture feature that
        fools the head in one orientation rarely does in all four)."""
        views = [(), (-1,), (-2,), (-2, -1)] if self.head_tta else [()]
        total = torch.zeros(x.shape[0], *x.shape[-2:], device=x.device)
        if dissimilarity is None:
            dissimilarity = self_dissimilarity_map(x)
        for dims in views:
            a, b, d = (x.flip(dims), x_hat.flip(dims), dissimilarity.flip(dims)) if dims else (x, x_hat, dissimilarity)
            p = torch.stack(self._head_logits(a, b, d)).float().sigmoid().mean(dim=0)
            total += p.flip(dims) if dims else p
        return total / len(views)

    def head_loss(self, batch: Batch, x_hat: torch.Tensor, gamma: float = FOCAL_GAMMA,
                  alpha: float = FOCAL_ALPHA, drawn_band: int = 0, drawn_share: float = 1.0) -> torch.Tensor:
        """Focal loss (``gamma``, ``alpha``) on known masks (every normal image: all zeros), hand-drawn
        ones (``batch.drawn``) taken as loose bounds (``drawn_band``, ``drawn_share``: see
        :func:`drawn_mask_target`); for an anomaly without a mask, BCE on its top-k mean logit
        (multiple-instance: somewhere in it is a defect)."""
        if self.head is None:
            return torch.zeros((), device=batch.x.device)
        has_mask = batch.has_mask if batch.has_mask is not None else torch.zeros_like(batch.anomaly)
        known = has_mask | ~batch.anomaly
        loose = batch.anomaly & ~has_mask
        target = (batch.mask.float() if batch.mask is not None
                  else torch.zeros(len(batch.x), *batch.x.shape[-2:], device=batch.x.device))
        loose_bounds = batch.drawn is not None and bool(batch.drawn.any()) and (drawn_band > 0 or drawn_share < 1)
        loss = torch.zeros((), device=batch.x.device)
        for logits in self._head_logits(batch.x, x_hat):  # each head learns on its own; their maps are averaged
            logits = logits.float()
            if loose_bounds and batch.drawn is not None:
                drawn_target, taught = drawn_mask_target(logits, target, batch.drawn, drawn_band, drawn_share)
                pixel = focal_loss(logits, drawn_target, gamma, alpha, taught)
            else:
                pixel = focal_loss(logits, target, gamma, alpha)
            loss = loss + torch.where(known, pixel, torch.zeros_like(pixel)).sum()
            if loose.any():
                image_logit = top_k_mean(logits[loose], 0.01)
                loss = loss + F.binary_cross_entropy_with_logits(image_logit, torch.ones_like(image_logit),
                                                                 reduction="sum")
        return loss / len(batch.x)

    @torch.no_grad()
    def scores(self, x: torch.Tensor, y: torch.Tensor, dissimilarity: torch.Tensor | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        size = (x.shape[-2], x.shape[-1])
        mu, logvar, extra = self.encode(x)
        x_hat = self.decode_from(mu, extra).float()
        mu, logvar = mu.float(), logvar.float()
        err = S.error_map(x, x_hat)
        recon = err.flatten(1).sum(dim=1)
        kl = kl_map(mu, logvar)
        kl_zx = kl.flatten(1).sum(dim=1)
        llr = (self.anomaly_mean * mu.sum(dim=1) - 0.5 * self.anomaly_mean**2 * mu.shape[1])
        maps = {
            "recon_max": err,
            "kl_zx_max": S.upsample_map(kl, size),
            "recon_norm_max": S.normalised_error_map(x, x_hat),
            "ssim_max": S.dissimilarity_map(x, x_hat),
            "selfsim_max": self_dissimilarity_map(x) if dissimilarity is None else dissimilarity,
        }
        if self.head is not None:
            maps["head_max"] = self._head_probability(x, x_hat, maps["selfsim_max"])
        out = {
            "kl_zx": kl_zx,
            "llr_zx": llr.flatten(1).max(dim=1).values,
            "elbo": self.likelihood.score(self.likelihood.error(x, x_hat)) + kl_zx + self.nuisance_kl(x, y).float(),
            "recon": recon,
        }
        out.update({k: S.smoothed_max(m, self.smooth_kernel) for k, m in maps.items()})
        if self.head is None:
            out["head_max"] = torch.full_like(recon, float("nan"))
        return out, maps

    def anomaly_latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar, _ = self.encode(x)
        return mu, logvar

    def latent_means(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``z_x`` mean-pooled over locations (B×d), as an image-level summary."""
        return {"z_x": self.anomaly_latent(x)[0].mean(dim=(2, 3))}

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        mu, _, extra = self.encode(x)
        return self.decode_from(mu, extra)

    def _vae_terms(self, batch: Batch, mu: torch.Tensor, logvar: torch.Tensor, x_hat: torch.Tensor,
                   use_dual_prior: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        target = batch.target if batch.target is not None else batch.x
        if batch.unknown is not None:  # no error, so no gradient, where the clean surface is unknown
            target = torch.where(batch.unknown[:, None], x_hat.detach().to(target.dtype), target)
        recon_nll, precision = self.likelihood(target, x_hat)
        mu, logvar = mu.float(), logvar.float()
        prior: torch.Tensor | float = 0.0
        if use_dual_prior and batch.anomaly.any():
            prior = dual_prior_means(batch, kl_map(mu, logvar), self.anomaly_mean, self.top_k)
        kl_x = kl_map(mu, logvar, prior).flatten(1).sum(dim=1)
        return recon_nll, kl_x, precision


class SpatialDAnVAE(_SpatialBase):
    name = "danvae"
    has_nuisance_latent = True

    def __init__(self, channels: int, image_size: int, zx_dim: int = 8, zy_dim: int = 8,
                 anomaly_mean: float = 10.0, prior_hidden: int = 32, smooth_kernel: int = 5,
                 likelihood: str = "calibrated", top_k: float = 0.05, head: bool = True, adversary: float = 5.0,
                 decorrelation: float = 0.0, head_noise: bool = False, head_resolution: str = "half",
                 heads: int = 1):
        super().__init__()
        n_downsamples(image_size)  # refuses unsupported sizes
        self.zx_dim, self.zy_dim = zx_dim, zy_dim
        self._init_common(channels, anomaly_mean, smooth_kernel, likelihood, top_k, head, head_noise=head_noise,
                          head_resolution=head_resolution)
        self.encoder_x = MapEncoder(channels, zx_dim)
        self.encoder_y = GlobalEncoder(channels, zy_dim)
        self.decoder = FiLMDecoder(channels, zx_dim, cond_dim=zy_dim)
        self.prior_y = nn.Sequential(nn.Linear(1, prior_hidden), nn.ReLU(), nn.Linear(prior_hidden, 2 * zy_dim))
        self.regressor = nn.Sequential(nn.ReLU(), nn.Linear(zy_dim, 1), nn.Sigmoid())
        # Predicts brightness from the pooled z_x through a reversed gradient: the encoder of
        # z_x is pushed to leave out whatever lighting the normalised input still shows (noise).
        self.adversary_weight = adversary
        self.adversary = nn.Sequential(nn.Linear(zx_dim, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())
        # ... and, with no adversary to fool, the brightness variance it explains linearly
        self.decorrelation_weight = decorrelation
        self.linear_leak = LinearLeak(zx_dim) if decorrelation > 0 else None
        self._add_heads(heads)

    def conditional_prior(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.prior_y(y.view(-1, 1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        mu_x, logvar_x = self.encoder_x(S.normalise_brightness(x))
        return mu_x, logvar_x, self.encoder_y(x)

    def decode(self, z_x: torch.Tensor, z_y: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_x, z_y)

    def decode_from(self, mu_x: torch.Tensor, extra: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.decoder(mu_x, extra[0])

    def decode_with_nuisance(self, x: torch.Tensor, z_y: torch.Tensor) -> torch.Tensor:
        """``x`` decoded from its own ``z_x`` map with ``z_y`` replaced (a lighting traversal)."""
        return self.decoder(self.encode(x)[0], z_y)

    def latent_means(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu_x, _, (mu_y, _) = self.encode(x)
        return {"z_x": mu_x.mean(dim=(2, 3)), "z_y": mu_y}

    def nuisance_kl(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu_y, logvar_y = self.encoder_y(x)
        p_mu, p_logvar = self.conditional_prior(y)
        return kl_between(mu_y.float(), logvar_y.float(), p_mu.float(), p_logvar.float())

    def loss(self, batch: Batch, weights: LossWeights) -> dict[str, torch.Tensor]:
        mu_x, logvar_x, (mu_y, logvar_y) = self.encode(batch.x)
        z_y = reparameterize(mu_y, logvar_y)
        x_hat = self.decoder(reparameterize(mu_x, logvar_x), z_y)
        recon_nll, kl_x, precision = self._vae_terms(batch, mu_x, logvar_x, x_hat, use_dual_prior=True)
        mu_y, logvar_y = mu_y.float(), logvar_y.float()
        p_mu, p_logvar = self.conditional_prior(batch.y)
        known = batch.y_known.unsqueeze(1)
        p_mu = torch.where(known, p_mu.float(), torch.zeros_like(mu_y))
        p_logvar = torch.where(known, p_logvar.float(), torch.zeros_like(logvar_y))
        kl_y = kl_between(mu_y, logvar_y, p_mu, p_logvar)
        y_hat = self.regressor(z_y).squeeze(1).float()
        aux = torch.where(batch.y_known, (batch.y - y_hat).pow(2), torch.zeros_like(y_hat)).sum() \
            / batch.y_known.sum().clamp(min=1)
        head = self.head_loss(batch, x_hat, weights.focal_gamma, weights.focal_alpha, weights.drawn_band,
                              weights.drawn_share)
        pooled = mu_x.mean(dim=(2, 3))
        y_adv = self.adversary(reverse_gradient(pooled)).squeeze(1).float()
        adv = torch.where(batch.y_known, (batch.y - y_adv).pow(2), torch.zeros_like(y_adv)).sum() \
            / batch.y_known.sum().clamp(min=1)
        leak = (self.linear_leak(pooled, batch.y, batch.y_known & ~batch.anomaly) if self.linear_leak is not None
                else torch.zeros((), device=adv.device))
        total = (recon_nll.mean() + weights.beta_x * kl_x.mean() + weights.beta_y * kl_y.mean()
                 + weights.alpha * precision * (aux + self.adversary_weight * adv + self.decorrelation_weight * leak)
                 + head)
        target = batch.target if batch.target is not None else batch.x
        recon = S.sse(target.float(), x_hat.detach().float()).mean()
        return {"total": total, "recon": recon, "kl_x": kl_x.mean(), "kl_y": kl_y.mean(), "aux": aux, "head": head,
                "adversary": adv, "leak": leak}


class SpatialVAE(_SpatialBase):
    """One spatial latent read from the raw image (no nuisance split): ``vae``, or ``dpvae``
    with the per-location dual prior on labelled anomalies."""

    def __init__(self, channels: int, image_size: int, latent_dim: int = 8, dual_prior: bool = False,
                 anomaly_mean: float = 10.0, smooth_kernel: int = 5, likelihood: str = "calibrated",
                 top_k: float = 0.05, head: bool = True, head_noise: bool = False, head_resolution: str = "half",
                 heads: int = 1):
        super().__init__()
        n_downsamples(image_size)
        self.name = "dpvae" if dual_prior else "vae"
        self.uses_anomalies = dual_prior
        self.latent_dim = latent_dim
        self._init_common(channels, anomaly_mean, smooth_kernel, likelihood, top_k, head, head_noise=head_noise,
                          head_resolution=head_resolution)
        self.encoder = MapEncoder(channels, latent_dim)
        self.decoder = FiLMDecoder(channels, latent_dim)
        self._add_heads(heads)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        mu, logvar = self.encoder(x)
        return mu, logvar, None

    def decode_from(self, mu: torch.Tensor, extra: None) -> torch.Tensor:
        return self.decoder(mu)

    def loss(self, batch: Batch, weights: LossWeights) -> dict[str, torch.Tensor]:
        mu, logvar = self.encoder(batch.x)
        x_hat = self.decoder(reparameterize(mu, logvar))
        recon_nll, kl_x, _ = self._vae_terms(batch, mu, logvar, x_hat, use_dual_prior=self.uses_anomalies)
        head = self.head_loss(batch, x_hat, weights.focal_gamma, weights.focal_alpha, weights.drawn_band,
                              weights.drawn_share)
        total = recon_nll.mean() + weights.beta_x * kl_x.mean() + head
        zero = torch.zeros((), device=total.device)
        target = batch.target if batch.target is not None else batch.x
        recon = S.sse(target.float(), x_hat.detach().float()).mean()
        return {"total": total, "recon": recon, "kl_x": kl_x.mean(), "kl_y": zero, "aux": zero, "head": head}

