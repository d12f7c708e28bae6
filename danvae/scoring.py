"""Anomaly scores for batches of images, the decision threshold, and the default score kind.

    table, heatmaps = score_images(model, images_nhwc, y)       # one column per score kind
    kind = choose_score_kind(val_table, val_labels, model.name)  # best validation AUROC
    threshold, how = calibrate_threshold(val_table[kind], val_labels)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import precision_recall_curve, roc_auc_score

from danvae.models.base import SCORE_KINDS, AnomalyVAE

# Used when validation holds no anomaly to choose by: the score on the disentangled
# anomaly-relevant latent for DAn-VAE, the plain negative ELBO for the baselines.
FALLBACK_KIND = {"danvae": "kl_zx", "dpvae": "kl_zx", "vae": "elbo"}


@torch.no_grad()
def score_images(model: AnomalyVAE, images_nhwc: np.ndarray, y: np.ndarray, batch_size: int = 256,
                 keep_heatmaps: bool = False) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Every score kind for each image (rows aligned with ``images_nhwc``), and optionally heatmaps."""
    device = next(model.parameters()).device
    model.eval()
    columns: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_KINDS}
    maps: list[np.ndarray] = []
    for start in range(0, len(images_nhwc), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images_nhwc[start:start + batch_size]))
        x = chunk.to(device).permute(0, 3, 1, 2).float().div_(255.0)
        yy = torch.as_tensor(y[start:start + batch_size], dtype=torch.float32, device=device)
        scores, err_map = model.scores(x, yy)
        for k in SCORE_KINDS:
            columns[k].append(scores[k].float().cpu().numpy())
        if keep_heatmaps:
            maps.append(err_map.float().cpu().numpy())
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


def _has_both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any() and (~labels).any())


def choose_score_kind(table: pd.DataFrame, is_anomaly: np.ndarray, model_name: str) -> tuple[str, dict[str, float]]:
    """The score kind with the best validation AUROC, or the model's fallback without anomalies."""
    is_anomaly = np.asarray(is_anomaly, dtype=bool)
    if not _has_both_classes(is_anomaly):
        return FALLBACK_KIND[model_name], {}
    aurocs = {k: float(roc_auc_score(is_anomaly, table[k])) for k in SCORE_KINDS if np.isfinite(table[k]).all()}
    return max(aurocs, key=aurocs.get), aurocs


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
