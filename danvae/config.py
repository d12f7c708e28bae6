"""Validated configuration for the model, its training and its scoring (pydantic).

Validated once at the edge (CLI, params.yaml); plain values inside.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ModelName = Literal["danvae", "vae", "dpvae"]
ScoreKind = Literal["auto", "kl_zx", "llr_zx", "elbo", "recon", "recon_max"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    name: ModelName = "danvae"
    zx_dim: int = Field(24, ge=1, le=1024)
    zy_dim: int = Field(8, ge=1, le=256)
    anomaly_mean: float = Field(10.0, gt=0, description="m in the anomaly prior N(m·1, I)")
    smooth_kernel: int = Field(5, ge=1, le=63, description="box size for recon_max")


class TrainConfig(_Strict):
    epochs: int = Field(30, ge=1)
    warmup_epochs: int = Field(8, ge=0, description="normal-only epochs while beta ramps up")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    beta_x: float = Field(1.0, ge=0)
    beta_y: float = Field(3.0, ge=0)
    alpha: float | None = Field(
        None, ge=0,
        description="auxiliary weight; None = the reference 3500 scaled to the image's pixel count",
    )
    sup_ratio: float = Field(0.5, gt=0, le=1, description="share of images that carry the nuisance label")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch default")

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainConfig":
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs})")
        return self


class ScoreConfig(_Strict):
    kind: ScoreKind = "auto"
    normal_quantile: float = Field(
        0.99, gt=0.5, lt=1.0, description="threshold quantile of normal validation scores when no anomaly is held out"
    )
    val_share: float = Field(0.2, ge=0.05, le=0.5, description="held-out share for threshold and score choice")
    batch_size: int = Field(256, ge=1)
