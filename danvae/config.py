"""Validated configuration for the model, its training and its scoring (pydantic).

Validated once at the edge (CLI, params.yaml); plain values inside.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ModelName = Literal["danvae", "vae", "dpvae", "danvae-global", "vae-global", "dpvae-global"]
Likelihood = Literal["auto", "sse", "calibrated", "relative"]
# What a model computes per image. Whole-image: kl_zx, llr_zx, elbo, recon. Local (the
# smoothed maximum of a per-pixel map): recon_max (squared error), kl_zx_max (KL of the
# z_x map), recon_norm_max (error of the brightness-normalised images), ssim_max
# (1 − SSIM), selfsim_max (how unlike the rest of the image a patch is; no training),
# head_max (the anomaly head). A kind a model has no map for is NaN.
MODEL_SCORE_KINDS = ("kl_zx", "llr_zx", "elbo", "recon", "recon_max", "kl_zx_max", "recon_norm_max", "ssim_max",
                     "selfsim_max", "head_max")
# ``fused`` combines the local kinds, standardised on validation normals, in the Detector.
SCORE_KINDS = (*MODEL_SCORE_KINDS, "fused")
ScoreKind = Literal[("auto", *SCORE_KINDS)]  # type: ignore[valid-type]
DEFECT_FAMILIES = ("blob_texture", "blob_shift", "line", "dots", "cutpaste", "seamless")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    name: ModelName = "danvae"
    zx_dim: int = Field(8, ge=1, le=1024, description="z_x size: channels per location (spatial) or vector size (global)")
    zy_dim: int = Field(8, ge=1, le=256)
    anomaly_mean: float = Field(10.0, gt=0, description="m in the anomaly prior N(m·1, I)")
    smooth_kernel: int = Field(5, ge=1, le=63, description="box size of the smoothed maximum of every local map")
    likelihood: Likelihood = Field(
        "auto", description="decoder variance: sse (fixed, the reference), calibrated (optimal σ, σ-VAE) or "
                            "relative (calibrated on images divided by their brightness: σ scales with lighting); "
                            "auto = relative for the spatial models, sse for the global ones"
    )
    top_k: float = Field(0.05, gt=0, le=1, description="share of z_x locations the dual prior pulls on an anomaly with no mask")
    head: bool = Field(True, description="spatial models: train the anomaly head (the head_max score)")
    head_noise: bool = Field(
        False, description="spatial models: the head also sees the noise level of the brightness-normalised image "
                           "(Immerkær), so it can learn how far a dark, noisy surface strays"
    )
    head_resolution: Literal["half", "full"] = Field(
        "half", description="spatial models: the head predicts at half resolution (upsampled) or, with one more "
                            "decoder stage on the full-resolution features, at full resolution"
    )
    heads: int = Field(1, ge=1, le=8, description="spatial models: anomaly heads, each from its own initial "
                                                  "weights, whose defect maps are averaged")
    adversary: float = Field(
        5.0, ge=0, description="spatial danvae: weight of the brightness adversary on z_x (gradient reversal); 0 = off"
    )
    decorrelation: float = Field(
        2.0, ge=0, description="spatial danvae: weight of the brightness variance that pooled z_x explains "
                               "linearly (covariances among normals, averaged over batches); 0 = off"
    )

    @property
    def spatial(self) -> bool:
        return not self.name.endswith("-global")

    def resolved_likelihood(self) -> str:
        if self.likelihood != "auto":
            return self.likelihood
        return "relative" if self.spatial else "sse"


class SyntheticDefectConfig(_Strict):
    """Defects pasted on the fly onto training normals, with exact masks (spatial models)."""

    share: float = Field(0.5, ge=0, le=1, description="share of normal images per batch that get a synthetic defect")
    families: list[Literal[DEFECT_FAMILIES]] = Field(default_factory=lambda: list(DEFECT_FAMILIES))  # type: ignore[valid-type]
    strength: float = Field(1.0, gt=0, le=2, description="scales every family's change")
    denoise: bool = Field(True, description="the VAE reconstructs the clean image from the defective one (DRAEM)")
    transplant: float = Field(0.5, ge=0, le=1, description="share of those defects that are real labelled defects "
                              "moved onto the normal (when labelled anomalies have masks)")
    transplant_background: Literal["local_mean", "matched"] = Field(
        "local_mean", description="what a labelled defect's change is taken relative to: the local mean around it, "
        "or the best-matching patch of the same image (its texture without the defect)")
    transplant_margin: int = Field(0, ge=0, le=16, description="pixels cut around a labelled defect's mask when "
                                   "it is transplanted (its change past a tight mask); the target stays the mask")
    transplant_strength: tuple[float, float] = Field(
        (1.0, 1.0), description="range of the power a transplanted defect's relative change is raised to "
        "(below 1: fainter than the original)")
    validation_defects: bool = Field(
        True, description="when validation holds no labelled anomaly, keep_best chooses the epoch on the "
        "validation normals and a copy of each with a synthetic defect of these families (else: the last epoch)")

    @field_validator("transplant_strength")
    @classmethod
    def _strength_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 2:
            raise ValueError(f"transplant_strength must be [low, high] with 0 < low <= high <= 2, got {list(v)}")
        return v


class LightingConfig(_Strict):
    """Relighting of training images: gain, gamma and a gradient."""

    share: float = Field(0.3, ge=0, le=1, description="share of normal images per batch relit")
    anomaly_share: float = Field(0.0, ge=0, le=1, description="share of labelled anomalies per batch relit (their masks stay exact)")
    gain: tuple[float, float] = (0.35, 1.3)
    gamma: tuple[float, float] = (0.75, 1.35)
    gradient: float = Field(0.3, ge=0, le=1)
    noise: float = Field(0.02, ge=0, le=0.2, description="largest sensor noise σ added (absolute, in [0, 1] units)")


class TrainConfig(_Strict):
    epochs: int = Field(60, ge=1)
    warmup_epochs: int = Field(8, ge=0, description="normal-only epochs while beta ramps up")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    beta_x: float = Field(1.0, ge=0)
    beta_y: float = Field(3.0, ge=0)
    alpha: float | None = Field(
        None, ge=0,
        description="auxiliary weight; None = the reference 3500 scaled to the image's pixel count",
    )
    sup_ratio: float = Field(0.5, gt=0, le=1, description="share of images that carry the nuisance label")
    anomaly_repeats: int = Field(
        4, ge=1, le=100,
        description="passes over the labelled anomalies per epoch after warm-up (reference: 1)",
    )
    anomaly_budget: float | None = Field(
        0.5, gt=0, description="anomaly images per epoch at most this share of the normal images: with many "
                               "labelled anomalies, fewer passes than anomaly_repeats (at least one); None = no cap")
    anomaly_steps: Literal["phase", "interleaved"] = Field(
        "phase", description="when an epoch's anomaly batches run: phase = all before its normal batches; "
                             "interleaved = spread evenly among them")
    anomaly_recon: Literal["all", "outside_mask"] = Field(
        "all", description="spatial models: what of a labelled anomaly is reconstructed: every pixel, or those "
                           "outside its known defect mask (the clean surface under the defect is unknown)")
    focal_gamma: float = Field(2.0, ge=0, le=5, description="focusing power of the anomaly head's focal loss (0 = weighted BCE)")
    focal_alpha: float = Field(0.75, gt=0, lt=1, description="weight of defect pixels in the anomaly head's focal loss")
    drawn_mask_band: int = Field(
        2, ge=0, le=8, description="spatial models: pixels around a hand-drawn defect mask (a labelled anomaly's, "
                                   "also when transplanted) that the anomaly head is taught nothing about")
    drawn_mask_share: float = Field(
        0.5, gt=0, le=1, description="spatial models: share of a hand-drawn mask's pixels the head is taught as "
                                     "defect (those it rates highest); the rest of the mask teaches nothing")
    head_weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay (AdamW) of the anomaly head's weights; 0 = plain Adam")
    lr_schedule: Literal["constant", "cosine"] = Field("cosine", description="learning rate over epochs")
    keep_best: bool = Field(
        True, description="end with the weights of the epoch with the best validation AUROC in the second half of training"
    )
    crop: int | None = Field(
        32, ge=16, description="spatial models: normal images train as random crops of this side (4× cheaper "
                               "steps at 32 of 64 px); None = whole images"
    )
    ema_decay: float | None = Field(
        None, ge=0.5, lt=1, description="keep an exponential moving average of the weights (decay per step) and "
        "validate, keep and ship it instead of the last step's weights; None = off")
    swa: bool = Field(
        False, description="validate, keep and ship the mean of the weights at the end of each epoch of the second "
                           "half (from the first epoch keep_best may choose), instead of the last epoch's")
    synthetic: SyntheticDefectConfig = SyntheticDefectConfig()
    lighting: LightingConfig = LightingConfig()
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch default")
    nproc: int = Field(1, ge=1, description="training processes on this host (torch DDP under torchrun: gloo on "
                                            "CPU, nccl on CUDA, one GPU each); the global batch stays batch_size")

    @model_validator(mode="after")
    def _crop_is_a_power_of_two(self) -> "TrainConfig":
        if self.crop is not None and self.crop & (self.crop - 1):
            raise ValueError(f"crop must be a power of two (e.g. 32) or null, got {self.crop}")
        return self

    @model_validator(mode="after")
    def _one_weight_average(self) -> "TrainConfig":
        if self.swa and self.ema_decay:
            raise ValueError("choose one average of the weights: swa or ema_decay, not both")
        return self

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
    max_val_fpr: float = Field(
        0.1, gt=0, le=1, description="the threshold flags at most this share of validation normals"
    )
    brightness_adjust: bool = Field(
        True, description="subtract the normal images' score trend over brightness (fitted on validation normals)"
    )
    trend_relit_copies: int = Field(
        4, ge=0, le=8, description="brightness nuisance: the trend is fitted on the validation normals and this many "
                                   "relit copies of each (train.lighting), so the rare dark tail has enough points; 0 = off"
    )
    val_share: float = Field(0.2, ge=0.05, le=0.5, description="held-out share for threshold and score choice")
    min_val_anomalies: int = Field(
        30, ge=2, description="auto: another kind than the model's default is chosen only with this many validation anomalies ..."
    )
    choice_confidence: float = Field(
        0.95, gt=0.5, lt=1, description="... and when it beats the default in this share of bootstrap resamples"
    )
    batch_size: int = Field(
        32, ge=1, description="images per scoring pass; on CPU 32 scored 1.45× faster than 256 (cache-sized tensors)"
    )


# ---- params.yaml: the pipeline's knobs ---------------------------------------------


class SyntheticSource(_Strict):
    """The embedded generator, written to a folder and then ingested like any other."""

    type: Literal["synthetic"] = "synthetic"
    name: str = "synthetic"
    n_normal: int = Field(600, ge=0)
    n_anomaly: int = Field(160, ge=0)
    size: int = Field(64, ge=16)
    dark_share: float = Field(0.15, ge=0, le=1)
    difficulty: Literal["easy", "default", "hard"] = "default"
    seed: int = 0


class FolderSource(_Strict):
    """A folder of images: ``normal/`` and ``anomaly/<defect>/`` subfolders, or flat (label unknown)."""

    type: Literal["folder"] = "folder"
    name: str | None = None
    path: str


class SplitShares(_Strict):
    train: float = Field(0.6, gt=0, lt=1)
    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitShares":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split shares train+val+test must sum to 1, got {total:g}")
        return self


def _default_sources() -> list[SyntheticSource | FolderSource]:
    return [SyntheticSource()]


class DataConfig(_Strict):
    sources: list[SyntheticSource | FolderSource] = Field(default_factory=_default_sources)
    incoming: str = "data/incoming"
    image_size: Literal[32, 64, 128, 256] = 64  # the sizes the networks are built for
    channels: Literal[1, 3] = 3
    split: SplitShares = SplitShares()
    train_anomaly_ratio: float = Field(
        0.10, ge=0, le=1, description="labelled anomalies in train, as a share of train normals (thesis: 0.05, 0.10, 0.20)"
    )
    test_anomaly_share: float = Field(0.30, gt=0, lt=1, description="share of anomalies in the evaluated test set")
    nuisance: str = Field(
        "brightness", pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
        description="the nuisance factor y: 'brightness' (measured on the pixels) or a column of nuisance.csv "
                    "beside the images (an exposure, a camera id as a number)",
    )


class ValidateConfig(_Strict):
    min_per_split: int = Field(10, ge=0, description="minimum normal images in each split")
    min_anomalies: int = Field(1, ge=0, description="minimum labelled anomalies in train, val and test")
    anomaly_share_max: float = Field(0.5, gt=0, le=1, description="most anomalies allowed among labelled images")
    drift_warn_pvalue: float = Field(0.01, gt=0, lt=1, description="KS p-value under which brightness drift warns")
    drift_fail_pvalue: float = Field(1e-6, gt=0, lt=1, description="KS p-value under which brightness drift fails")
    drift_min_batch: int = Field(20, ge=2, description="smaller new batches are reported, not judged")


class TrackingConfig(_Strict):
    experiment: str = "danvae"
    registered_model: str = "danvae-surface"
    alias: str = Field("challenger", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$",
                       description="alias a newly registered version gets (the sweep uses its own, 'sweep')")


class PromoteConfig(_Strict):
    auroc_tolerance: float = Field(0.01, ge=0, le=1, description="how much worse overall AUROC may be")
    dark_tolerance: float = Field(0.02, ge=0, le=1, description="how much worse darkest-quintile AUROC may be")
    min_auroc: float = Field(0.6, ge=0, le=1, description="validation floor for the first version")


class OrchestrationConfig(_Strict):
    train_pool: str | None = Field(None, description="Prefect work pool for the train stage (e.g. 'gpu'); None = in-process")
    retrain_cron: str = "0 2 * * *"


class ServeConfig(_Strict):
    """Limits the logged model enforces on every request (they travel with it)."""

    max_pixels: int = Field(4_194_304, ge=1024, description="largest image accepted, in pixels (H×W)")
    max_batch: int = Field(256, ge=1, description="most images in one request")


class DaskConfig(_Strict):
    """Where the score stage scores (the result is the same table either way, so not a DVC param)."""

    workers: int = Field(1, ge=1, le=256, description="1 = in the stage's own process; more = a Dask LocalCluster "
                                                      "of that many one-thread worker processes")
    address: str | None = Field(None, description="a running Dask scheduler (tcp://host:8786) to use instead")

    @property
    def enabled(self) -> bool:
        return self.workers > 1 or self.address is not None


class Params(_Strict):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    score: ScoreConfig = ScoreConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    tracking: TrackingConfig = TrackingConfig()
    promote: PromoteConfig = PromoteConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    serve: ServeConfig = ServeConfig()
    dask: DaskConfig = DaskConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, protected_namespaces=())


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds a bad value; the message names the key."""


def _describe(err: Any) -> str:  # pydantic's ErrorDetails, a TypedDict
    key = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("SyntheticSource", "FolderSource")))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling against params.yaml's documented sections)"
    given = err.get("input")
    shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
    return f"{key or '<top level>'}: {msg}{shown}"


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise :class:`ParamsError` naming the bad key."""
    import yaml
    from pydantic import ValidationError

    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the project root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors()[:5])
        raise ParamsError(f"{path}: {problems}") from None
