"""Lighting augmentation of normal images: gain, gamma and a linear gradient.

    x_relit = relight(x, generator, gain=(0.35, 1.3))

Real lines see a rare dark tail (a lamp ageing, a shadow); relighting a share of the
training normals covers it without labelled dark images. The result stays on the uint8
grid, like a real photograph.
"""
from __future__ import annotations

import math

import torch


def relight(x: torch.Tensor, g: torch.Generator, gain: tuple[float, float] = (0.35, 1.3),
            gamma: tuple[float, float] = (0.75, 1.35), gradient: float = 0.3, noise: float = 0.02) -> torch.Tensor:
    """Each image of B×C×H×W ``x`` with a random gain (log-uniform), gamma and linear gradient,
    plus sensor noise of up to ``noise`` (absolute, as a camera's: a dimmed image gets
    relatively noisier, as a really dark photograph is)."""
    n, _, h, w = x.shape
    dev = x.device

    def log_uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.exp(torch.rand(n, generator=g) * (math.log(hi) - math.log(lo)) + math.log(lo)).to(dev)

    k, gm = log_uniform(*gain), log_uniform(*gamma)
    theta = (torch.rand(n, generator=g) * 2 * math.pi).to(dev)
    slope = (torch.rand(n, generator=g) * gradient).to(dev)
    yy, xx = torch.meshgrid(torch.linspace(-0.5, 0.5, h, device=dev), torch.linspace(-0.5, 0.5, w, device=dev),
                            indexing="ij")
    ramp = 1 + slope[:, None, None] * (xx * torch.cos(theta)[:, None, None] + yy * torch.sin(theta)[:, None, None])
    out = k[:, None, None, None] * x.clamp(min=0).pow(gm[:, None, None, None]) * ramp[:, None]
    sigma = (torch.rand(n, generator=g) * noise).to(dev)
    out = out + sigma[:, None, None, None] * torch.randn(x.shape, generator=g).to(dev)
    return out.clamp(0, 1).mul(255).round().div(255)

