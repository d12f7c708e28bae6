"""Convolutional encoder and decoder blocks shared by DAn-VAE and the baselines.

Depth adapts to the image size: stride-2 3×3 convolutions halve the side until it
is 8 px (at least three of them), with widths 32, 64, 128, then 128 onward.
"""
from __future__ import annotations

import math

import torch
from torch import nn

SUPPORTED_SIZES = (32, 64, 128, 256)


def n_downsamples(image_size: int) -> int:
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image size must be a power of two from 16 up (e.g. {SUPPORTED_SIZES}), got {image_size}")
    return max(3, int(math.log2(image_size)) - 3)


def widths(image_size: int) -> list[int]:
    return [min(32 * 2**i, 128) for i in range(n_downsamples(image_size))]


class ConvEncoder(nn.Module):
    """x (B×C×S×S) → mean and log-variance of a diagonal Gaussian over a latent of ``latent_dim``."""

    def __init__(self, channels: int, image_size: int, latent_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in widths(image_size):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = image_size // 2 ** n_downsamples(image_size)
        self.head = nn.Linear(c_in * side * side, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.features(x)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)


class ConvDecoder(nn.Module):
    """z (B×latent_dim) → image means in [0, 1] (B×C×S×S), mirror of the encoder."""

    def __init__(self, channels: int, image_size: int, latent_dim: int):
        super().__init__()
        ws = widths(image_size)
        self.side = image_size // 2 ** len(ws)
        self.c0 = ws[-1]
        self.project = nn.Linear(latent_dim, self.c0 * self.side * self.side)
        layers: list[nn.Module] = [nn.ReLU(inplace=True)]
        outs = list(reversed(ws[:-1])) + [channels]
        c_in = self.c0
        for i, c_out in enumerate(outs):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1))
            if i < len(outs) - 1:
                layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(-1, self.c0, self.side, self.side)
        return torch.sigmoid(self.net(h))


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()
