"""Anomaly scores for batches of images, the decision threshold, and the score kind.

    table, heatmaps = score_images(model, images_nhwc, y, heatmap_kind="head_max")
    stats = fit_fusion(val_table[val_labels == 0]); table["fused"] = fuse(table, stats)
    choice = choose_score_kind(val_table, val_labels, default_kind(model))
    threshold, how = calibrate_threshold(val_table[choice.kind], val_labels)
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import precision_recall_curve, roc_auc_score
from tqdm.auto import tqdm

from danvae.config import MODEL_SCORE_KINDS
from danvae.evaluation.metrics import bootstrap_aurocs
from danvae.models.base import AnomalyVAE
from danvae.models.self_similarity import self_dissimilarity_map

# The documented default kind of each model: used unless validation holds enough anomalies
# to show, beyond resampling noise, that another kind ranks them better.
DEFAULT_KIND = {"danvae": "head_max", "dpvae": "head_max", "vae": "head_max",
                "danvae-global": "kl_zx", "dpvae-global": "kl_zx", "vae-global": "elbo"}
NO_HEAD_KIND = "recon_norm_max"  # spatial models trained without the head
FUSED_PARTS = ("head_max", "selfsim_max")  # the local kinds that carry signal (recon_norm_max, kl_zx_max: ≈ 0.5)
HEATMAP_FALLBACK = "recon_max"


def default_kind(model: AnomalyVAE) -> str:
    """The score kind a model is judged by when validation cannot tell kinds apart."""
    if model.spatial and model.head is None:
        return NO_HEAD_KIND
    return DEFAULT_KIND[model.name]


def heatmap_kind(kind: str, model: AnomalyVAE) -> str:
    """The map behind a score kind (the fused score shows the head's map, or the normalised error)."""
    if kind == "fused":
        return "head_max" if model.head is not None else NO_HEAD_KIND
    return kind if kind.endswith("_max") and kind in MODEL_SCORE_KINDS else HEATMAP_FALLBACK


def image_batches(images_nhwc: np.ndarray, batch_size: int, device: torch.device | str) -> Iterator[torch.Tensor]:
    """Consecutive batches of uint8 N×H×W×C images as float B×C×H×W tensors in [0, 1] on ``device``:
    how every model input is made from images."""
    for start in range(0, len(images_nhwc), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images_nhwc[start:start + batch_size]))
        yield chunk.to(device).permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float B×C×H×W tensors in [0, 1] back to uint8 B×H×W×C images (``image_batches`` undone)."""
    return np.rint(x.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)


@torch.no_grad()
def self_dissimilarities(images_nhwc: np.ndarray, batch_size: int = 256, device: torch.device | str = "cpu"
                         ) -> np.ndarray:
    """The self-dissimilarity map of each image (N×H×W). It needs no model, so images scored
    again and again (validation during training) compute it once."""
    device = torch.device(device)
    maps = [self_dissimilarity_map(x).float().cpu().numpy() for x in image_batches(images_nhwc, batch_size, device)]
    return np.concatenate(maps) if maps else np.zeros((0, *images_nhwc.shape[1:3]), np.float32)


@torch.no_grad()
def score_images(model: AnomalyVAE, images_nhwc: np.ndarray, y: np.ndarray, batch_size: int = 256,
                 keep_heatmaps: bool = False, heatmap_kind: str = HEATMAP_FALLBACK,
                 dissimilarity: np.ndarray | None = None, progress: bool = False
                 ) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Every model score kind for each image (rows aligned with ``images_nhwc``), and optionally
    the per-pixel map of ``heatmap_kind`` (N×H×W). ``dissimilarity``: the images'
    :func:`self_dissimilarities`, when already computed. ``progress``: a bar on stderr."""
    device = next(model.parameters()).device
    model.eval()
    columns: dict[str, list[np.ndarray]] = {k: [] for k in MODEL_SCORE_KINDS}
    maps: list[np.ndarray] = []
    bar = tqdm(total=len(images_nhwc), desc="scoring", unit="image", disable=not progress, leave=False)
    for i, x in enumerate(image_batches(images_nhwc, batch_size, device)):
        start = i * batch_size
        yy = torch.as_tensor(y[start:start + batch_size], dtype=torch.float32, device=device)
        known = None if dissimilarity is None else torch.from_numpy(dissimilarity[start:start + batch_size]).to(device)
        scores, kind_maps = model.scores(x, yy, known)
        for k in MODEL_SCORE_KINDS:
            columns[k].append(scores[k].float().cpu().numpy())
        if keep_heatmaps:
            m = kind_maps.get(heatmap_kind, kind_maps[HEATMAP_FALLBACK])
            maps.append(m.float().cpu().numpy())
        bar.update(len(x))
    bar.close()
    table = pd.DataFrame({k: np.concatenate(v) if v else np.zeros(0) for k, v in columns.items()})
    heatmaps = np.concatenate(maps) if keep_heatmaps and maps else None
    return table, heatmaps


def fit_brightness_trend(scores: np.ndarray, brightness: np.ndarray, degree: int = 2) -> list[float]:
    """Median of normal images' scores as a polynomial in brightness (quantile regression, so a
    few extreme scores do not pull it). Subtracting it leaves a score that does not rise or
    fall with lighting alone; returns polynomial coefficients, highest power first."""
    from sklearn.linear_model import QuantileRegressor

    y = np.asarray(brightness, dtype=np.float64)
    features = np.stack([y**k for k in range(degree, 0, -1)], axis=1)
    reg = QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs").fit(features, np.asarray(scores, np.float64))
    return [float(c) for c in reg.coef_] + [float(reg.intercept_)]


def fit_brightness_spread(residuals: np.ndarray, brightness: np.ndarray, quantile: float = 0.9) -> list[float]:
    """The ``quantile`` of normal images' trend-free scores as a line in brightness: how far
    normal scores reach above their median at each brightness. Dividing by it gives dark
    images (noisier, so more spread) the same false-alarm rate as bright ones."""
    from sklearn.linear_model import QuantileRegressor

    y = np.asarray(brightness, dtype=np.float64)[:, None]
    reg = QuantileRegressor(quantile=quantile, alpha=0.0, solver="highs").fit(y, np.asarray(residuals, np.float64))
    return [float(reg.coef_[0]), float(reg.intercept_)]


def brightness_adjusted(scores: np.ndarray, brightness: np.ndarray, trend: list[float] | None,
                        spread: list[float] | None = None) -> np.ndarray:
    """Scores less their normal median trend over brightness, in units of the normal spread."""
    scores = np.asarray(scores, dtype=np.float64)
    if trend is None:
        return scores
    b = np.asarray(brightness, dtype=np.float64)
    out = scores - np.polyval(trend, b)
    if spread is not None:
        # floored at a tenth of the spread at mid brightness, so an extrapolated line never divides by ~0
        reach = np.polyval(spread, b)
        out = out / np.maximum(reach, 0.1 * max(float(np.polyval(spread, 0.5)), 1e-12))
    return out


def fit_fusion(normal_table: pd.DataFrame) -> dict[str, list[float]]:
    """Median and robust spread (IQR / 1.349) of each local kind over normal images, to put
    kinds on one scale before fusing them."""
    stats = {}
    for k in FUSED_PARTS:
        v = normal_table[k].to_numpy(dtype=np.float64) if k in normal_table else np.zeros(0)
        if len(v) >= 2 and np.isfinite(v).all():
            q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
            stats[k] = [float(q50), float(max((q75 - q25) / 1.349, 1e-12))]
    return stats


def fuse(table: pd.DataFrame, stats: dict[str, list[float]] | None) -> np.ndarray:
    """Mean of the standardised local kinds (NaN when no stats were fitted)."""
    if not stats:
        return np.full(len(table), np.nan)
    parts = [(table[k].to_numpy(dtype=np.float64) - c) / s for k, (c, s) in stats.items()]
    return np.mean(parts, axis=0)


def _has_both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any() and (~labels).any())


@dataclass
class KindChoice:
    kind: str
    how: str  # why this kind: "default", "validation", or why validation could not decide
    aurocs: dict[str, float] = field(default_factory=dict)  # validation AUROC of every finite kind
    interval: tuple[float, float] | None = None  # 95 % bootstrap interval of the chosen kind's AUROC


def choose_score_kind(table: pd.DataFrame, is_anomaly: np.ndarray, default: str, min_anomalies: int = 30,
                      confidence: float = 0.95, n_boot: int = 200, seed: int = 0) -> KindChoice:
    """The model's ``default`` kind, unless validation holds at least ``min_anomalies`` anomalies
    and another kind beats the default's AUROC in ``confidence`` of paired bootstrap resamples
    (then the best such kind). Validation AUROC is reported with its 95 % interval."""
    is_anomaly = np.asarray(is_anomaly, dtype=bool)
    if not _has_both_classes(is_anomaly):
        return KindChoice(default, "default: validation holds no anomaly")
    kinds = [k for k in table.columns if k in (*MODEL_SCORE_KINDS, "fused") and np.isfinite(table[k]).all()]
    aurocs = {k: float(roc_auc_score(is_anomaly, table[k])) for k in kinds}
    if default not in aurocs:
        default = max(aurocs, key=lambda k: aurocs[k])
    boot = bootstrap_aurocs(is_anomaly, table[kinds].to_numpy(dtype=np.float64), n_boot, seed)
    chosen, how = default, "default"
    n_anomalies = int(is_anomaly.sum())
    if n_anomalies < min_anomalies:
        how = f"default: {n_anomalies} validation anomalies < {min_anomalies} to choose by"
    else:
        base = boot[:, kinds.index(default)]
        wins = {k: float((boot[:, j] > base).mean()) for j, k in enumerate(kinds) if k != default}
        better = [k for k, w in wins.items() if w >= confidence]
        if better:
            chosen = max(better, key=lambda k: aurocs[k])
            how = f"validation: beats {default} in {wins[chosen]:.0%} of resamples"
    col = boot[:, kinds.index(chosen)]
    return KindChoice(chosen, how, aurocs, (float(np.quantile(col, 0.025)), float(np.quantile(col, 0.975))))


def calibrate_threshold(scores: np.ndarray, is_anomaly: np.ndarray, normal_quantile: float = 0.99,
                        max_fpr: float = 0.1) -> tuple[float, str]:
    """Best-F1 threshold when anomalies are present, else a high quantile of normal scores.

    Images with a score ``>=`` the threshold are called anomalous. The best-F1 search only
    considers thresholds that flag at most ``max_fpr`` of the validation normals: with a
    weak score, F1 alone is maximised by calling everything anomalous, which an
    inspection line cannot use.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_anomaly = np.asarray(is_anomaly, dtype=bool)
    if len(scores) == 0:
        raise ValueError("cannot calibrate a threshold on no validation images")
    if _has_both_classes(is_anomaly):
        precision, recall, thresholds = precision_recall_curve(is_anomaly, scores)
        f1 = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
        normal = np.sort(scores[~is_anomaly])
        fpr = 1.0 - np.searchsorted(normal, thresholds, side="left") / len(normal)
        f1 = np.where(fpr <= max_fpr, f1, -1.0)
        if f1.max() >= 0:
            return float(thresholds[int(np.argmax(f1))]), f"best_f1_fpr<={max_fpr:g}"
    normal = scores[~is_anomaly] if (~is_anomaly).any() else scores
    # No anomalies to choose by (or none separable within max_fpr). Strictly above the quantile, so not every image is flagged even when scores tie.
    return float(np.nextafter(np.quantile(normal, normal_quantile), np.inf)), f"normal_q{normal_quantile:g}"


def per_file(files: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """What ``danvae score`` writes: each image's ``path`` and ``label`` (from ``files``) with its
    scores, the decision first."""
    out = pd.concat([files[["path", "label"]].reset_index(drop=True), table.reset_index(drop=True)], axis=1)
    ordered = ["path", "label", "brightness", "score", "is_anomaly"]
    return out[ordered + [c for c in out.columns if c not in ordered]]

