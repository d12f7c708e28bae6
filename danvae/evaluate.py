"""Detection metrics from a score table: overall, per brightness quintile, and the
brightness bias of the score among normal images.

    metrics = evaluate_scores(pd.read_csv("scores.csv"))
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

N_BRIGHTNESS_BINS = 5


class EvaluationError(ValueError):
    """The score table cannot be evaluated; the message says why."""


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if labels.any() and (~labels).any() else None


def brightness_bins(brightness: pd.Series, n_bins: int = N_BRIGHTNESS_BINS) -> pd.Series:
    """Quantile bin per image, 0 = darkest."""
    return pd.qcut(brightness.rank(method="first"), n_bins, labels=False)


def evaluate_scores(table: pd.DataFrame, score_column: str = "score") -> dict:
    """AUROC, AUPRC, F1/precision/recall at the threshold, per-quintile AUROC, brightness bias."""
    required = {"label", "brightness", score_column}
    missing = required - set(table.columns)
    if missing:
        raise EvaluationError(f"score table lacks column(s) {sorted(missing)}; make it with 'danvae score'")
    known = table[table["label"].isin(["normal", "anomaly"])].reset_index(drop=True)
    if known.empty:
        raise EvaluationError("no image in the score table has a normal/anomaly label to evaluate against")
    labels = (known["label"] == "anomaly").to_numpy()
    scores = known[score_column].to_numpy(dtype=float)
    metrics: dict = {"n_images": int(len(known)), "n_anomalies": int(labels.sum()), "auroc": _auroc(labels, scores),
                     "auprc": float(average_precision_score(labels, scores)) if labels.any() else None}
    if "is_anomaly" in known:
        pred = known["is_anomaly"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
        metrics.update(f1=float(f1_score(labels, pred, zero_division=0)),
                       precision=float(precision_score(labels, pred, zero_division=0)),
                       recall=float(recall_score(labels, pred, zero_division=0)),
                       flagged_share=float(pred.mean()))
    n_bins = min(N_BRIGHTNESS_BINS, len(known))
    bins = brightness_bins(known["brightness"], n_bins)
    metrics["auroc_by_brightness"] = [
        _auroc(labels[(bins == b).to_numpy()], scores[(bins == b).to_numpy()]) for b in range(n_bins)
    ]
    metrics["auroc_darkest"] = metrics["auroc_by_brightness"][0]
    normal = known[~labels]
    if len(normal) >= 3 and normal["brightness"].nunique() > 1:
        rho = spearmanr(normal["brightness"], normal[score_column]).statistic
        metrics["brightness_spearman_normal"] = float(rho) if np.isfinite(rho) else None
    else:
        metrics["brightness_spearman_normal"] = None
    return metrics
