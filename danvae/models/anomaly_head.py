"""The anomaly head: per-pixel defect logits from an image next to its reconstruction.

    head = AnomalyHead(channels=3)
    logits = head(x_norm, x_hat_norm)          # B×H×W, trained on known defect masks

The supervised counterpart of ``q(y|z_y)`` on the anomaly side (DRAEM's discriminative
network, small): it learns where an image and what the VAE expected there disagree in
a way that labelled and synthetic defects do. Inputs are brightness-normalised, so the
head does not see lighting. Its input is detached from the VAE, so its loss trains the
head alone, and with Adam its scale against the VAE's loss does not matter.
"""
from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from danvae.models import score_maps as S


DEFECT_PRIOR = 0.01  # the head starts out predicting this defect probability everywhere
FOCAL_GAMMA = 2.0  # the focal loss's defaults (train.focal_gamma, train.focal_alpha)
FOCAL_ALPHA = 0.75


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: no running statistics, so a briefly trained head behaves
    # in evaluation exactly as in training.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.ReLU(inplace=True))


class AnomalyHead(nn.Module):
    """A small U-Net on [x, x̂, |x − x̂|, self-dissimilarity] → one logit per pixel. By default it predicts at
    half resolution (upsampled): a defect of a few pixels still spans several cells, at half the cost.
    ``full_resolution`` adds a last decoder stage that joins the full-resolution features."""

    def __init__(self, channels: int, width: int = 24, context: int = 0, full_resolution: bool = False):
        super().__init__()
        w = width
        self.context = context  # per-image numbers shown to the head as constant maps (e.g. the noise level)
        self.enc1 = _conv(3 * channels + 1 + context, w)
        self.enc2 = nn.Sequential(_conv(w, 2 * w), _conv(2 * w, 2 * w))
        self.enc3 = nn.Sequential(_conv(2 * w, 2 * w), _conv(2 * w, 2 * w))
        self.dec2 = _conv(4 * w + w, 2 * w)
        self.dec1 = _conv(2 * w + w, w) if full_resolution else None
        self.out = nn.Conv2d(w if full_resolution else 2 * w, 1, 1)
        # Focal-loss practice (Lin et al. 2017): start at the rare-defect prior, not at 0.5,
        # so the first steps are not spent pushing every normal pixel down.
        nn.init.constant_(cast(torch.Tensor, self.out.bias), -math.log((1 - DEFECT_PRIOR) / DEFECT_PRIOR))

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor, dissimilarity: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        # the dissimilarity ratio is ≈ 1 on ordinary texture: centred on 0 for the first layer
        cue = (dissimilarity[:, None] - 1.0).clamp(-1.0, 4.0)
        parts = [x, x_hat, (x - x_hat).abs(), cue]
        if self.context:
            if context is None:
                raise ValueError(f"this head was built to see {self.context} per-image context value(s): pass context")
            parts.append(context.view(len(x), self.context, 1, 1).expand(-1, -1, *x.shape[-2:]).to(x.dtype))
        e1 = self.enc1(torch.cat(parts, dim=1))
        half = F.max_pool2d(e1, 2)
        e2 = self.enc2(half)
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="nearest"), e2, half], dim=1))
        if self.dec1 is not None:
            d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="nearest"), e1], dim=1))
            return self.out(d1)[:, 0]
        return F.interpolate(self.out(d2), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA,
               alpha: float = FOCAL_ALPHA, taught: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary focal loss (Lin et al. 2017) per image; ``alpha`` weighs the rare defect pixels.
    With a bool ``taught`` map, the other pixels add nothing (the mean stays over every pixel)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    loss = a_t * (1 - p_t).pow(gamma) * ce
    if taught is not None:
        loss = torch.where(taught, loss, torch.zeros_like(loss))
    return loss.flatten(1).mean(dim=1)


def drawn_mask_target(logits: torch.Tensor, mask: torch.Tensor, drawn: torch.Tensor, band: int, share: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's per-pixel target and the pixels it is taught on (both B×H×W), where some masks
    (``drawn``, B bool) were drawn by hand. A drawn mask bounds its defect loosely: part of it is
    unchanged surface, and a defect's change can reach past it. So the ``band`` pixels around it
    teach nothing, and of the mask only the ``share`` of pixels the head rates highest (``logits``)
    is taught as defect, the rest nothing (multiple-instance learning inside the mask). Other
    masks are exact: target the mask, every pixel taught."""
    mask = mask.bool()
    drawn_px = drawn[:, None, None]
    taught = torch.ones_like(mask)
    if band:
        taught &= ~(drawn_px & S.dilate(mask, band) & ~mask)
    target = mask
    if share < 1:
        inside = logits.detach().flatten(1).masked_fill(~mask.flatten(1), float("-inf"))
        k = (mask.flatten(1).sum(dim=1) * share).ceil().long().clamp(min=1)
        kth = inside.sort(dim=1, descending=True).values.gather(1, (k - 1)[:, None])
        top = mask & (logits.detach() >= kth.view(-1, 1, 1))
        target = torch.where(drawn_px, top, mask)
        taught &= ~(drawn_px & mask & ~top)
    return target.float(), taught


def top_k_mean(logits: torch.Tensor, share: float = 0.01) -> torch.Tensor:
    """Mean of each map's highest ``share`` of values: an image-level logit for a defect with no mask."""
    flat = logits.flatten(1)
    k = max(1, int(round(share * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(dim=1)
