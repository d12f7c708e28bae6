"""What changes from epoch to epoch: the β warm-up, the learning rate, the loss weights, the
first epoch whose weights may be kept, and how an epoch's anomaly steps fall among its normal ones."""
from __future__ import annotations

import math

import torch

from danvae.config import TrainConfig
from danvae.models.base import LossWeights

REFERENCE_PIXELS = 3 * 128 * 128
REFERENCE_ALPHA = 3500.0


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """Linear ramp from 0 at epoch 0 to 1 at ``warmup_epochs`` (0-based epochs)."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, epoch / warmup_epochs)


def default_alpha(channels: int, image_size: int) -> float:
    """The reference α = 3500 was set for 128×128 RGB; scale it with the pixel count,
    since the reconstruction term it balances is a sum over pixels."""
    return REFERENCE_ALPHA * channels * image_size * image_size / REFERENCE_PIXELS


def selection_start(cfg: TrainConfig) -> int:
    """The first epoch (0-based) whose weights ``keep_best`` may keep: the second half, after warm-up."""
    return max(cfg.warmup_epochs, cfg.epochs // 2)


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The epoch's learning rate: constant, or cosine from ``lr`` down to ``lr``/20 at the last epoch."""
    if cfg.lr_schedule == "constant" or cfg.epochs <= 1:
        return cfg.lr
    floor = cfg.lr / 20
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * epoch / (cfg.epochs - 1)))


def loss_weights(cfg: TrainConfig, epoch: int, channels: int, image_size: int) -> LossWeights:
    f = warmup_factor(epoch, cfg.warmup_epochs)
    alpha = cfg.alpha if cfg.alpha is not None else default_alpha(channels, image_size)
    return LossWeights(beta_x=cfg.beta_x * f, beta_y=cfg.beta_y * f, alpha=alpha,
                       focal_gamma=cfg.focal_gamma, focal_alpha=cfg.focal_alpha,
                       drawn_band=cfg.drawn_mask_band, drawn_share=cfg.drawn_mask_share)


def anomaly_passes(cfg: TrainConfig, anomalies: int, normals: int) -> int:
    """Passes over the labelled anomalies per epoch: ``anomaly_repeats``, cut so that they show at
    most ``anomaly_budget`` × the normal images (at least one pass)."""
    if cfg.anomaly_budget is None or not anomalies:
        return cfg.anomaly_repeats
    return max(1, min(cfg.anomaly_repeats, math.floor(cfg.anomaly_budget * normals / anomalies + 1e-9)))


def interleave(anomaly_batches: list[tuple[torch.Tensor, bool]], normal_batches: list[torch.Tensor]
               ) -> list[tuple[torch.Tensor, bool | None]]:
    """Anomaly batches (with their crop flag) spread evenly among normal batches (flag None): each
    kind sorted by the middle of its slot in the epoch, with no random draw."""
    steps: list[tuple[torch.Tensor, bool | None]] = [*anomaly_batches, *[(b, None) for b in normal_batches]]
    slot = [(i + 0.5) / len(anomaly_batches) for i in range(len(anomaly_batches))]
    slot += [(j + 0.5) / len(normal_batches) for j in range(len(normal_batches))]
    return [steps[k] for k in sorted(range(len(steps)), key=slot.__getitem__)]
