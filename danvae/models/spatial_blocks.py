"""Convolutional blocks of the spatial models: a latent *map* encoder and a FiLM decoder.

    enc = MapEncoder(channels=3, latent_channels=8)          # x → μ, log σ² maps at S/4
    dec = FiLMDecoder(channels=3, latent_channels=8, cond_dim=8)
    x_hat = dec(z_map, z_y)                                    # z_y modulates every layer

A latent location sees about a 16 px neighbourhood, so a small defect changes a few
locations strongly instead of a global vector slightly.
"""
from __future__ import annotations

import torch
from torch import nn

DOWNSAMPLE = 4  # the latent map's side is the image side / 4


class MapEncoder(nn.Module):
    """x (B×C×S×S) → mean and log-variance maps (B×d×S/4×S/4)."""

    def __init__(self, channels: int, latent_channels: int, width: int = 48):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width // 2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(width, 2 * latent_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)


class GlobalEncoder(nn.Module):
    """x (B×C×H×W, any size that is a multiple of 8) → mean and log-variance of a global latent
    vector: strided convolutions, then the average over locations, so it reads a training
    crop and a whole image alike."""

    def __init__(self, channels: int, latent_dim: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(2 * width, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.features(x).mean(dim=(2, 3))).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)


class FiLM(nn.Module):
    """Feature-wise affine modulation of a feature map by a global vector."""

    def __init__(self, cond_dim: int, features: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * features)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(cond).chunk(2, dim=-1)
        return h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class FiLMDecoder(nn.Module):
    """z map (B×d×S/4×S/4), optionally conditioned on a global z_y, → image means in [0, 1]."""

    def __init__(self, channels: int, latent_channels: int, cond_dim: int = 0, width: int = 48):
        super().__init__()
        w2 = width // 2
        self.stages = nn.ModuleList([
            nn.Conv2d(latent_channels, width, 3, padding=1),
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)),
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, w2, 3, padding=1)),
        ])
        self.films = nn.ModuleList([FiLM(cond_dim, c) for c in (width, width, w2)]) if cond_dim else None
        self.out = nn.Conv2d(w2, channels, 3, padding=1)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = z
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if self.films is not None:
                h = self.films[i](h, cond)
            h = torch.relu(h)
        return torch.sigmoid(self.out(h))
