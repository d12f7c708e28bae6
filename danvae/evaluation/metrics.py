"""Detection metrics from a score table: overall, per brightness quintile, the brightness
bias of the score among normal images, plot data (ROC/PR curves, per-quintile rows,
score vs brightness) and pixel AUROC from heatmaps and defect masks.

    metrics = evaluate_scores(pd.read_csv("scores.csv"))          # numbers, for metrics.json
    plots = plot_data(table)                                      # {"roc": [...], "pr": [...], ...}
    pixel_auroc(heatmaps, resize_masks(masks, heatmaps.shape[-1]))

With a ``nuisance`` column (a recorded factor, ``data.nuisance``), ``auroc_by_nuisance`` and
``nuisance_spearman_normal`` give the same per quintile of that factor.

Quintiles: ``auroc_by_brightness`` / ``auprc_by_brightness`` bin *all* labelled images
by brightness (0 = darkest); ``fpr_darkest`` is the false-positive rate at the threshold
on the darkest fifth of the *normal* images (the inspectors' false alarms under poor light).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy.stats import mannwhitneyu, spearmanr
from sklearn.metrics import (average_precision_score, f1_score, precision_recall_curve, precision_score,
                             recall_score, roc_auc_score, roc_curve)

from danvae.config import SCORE_KINDS

N_BRIGHTNESS_BINS = 5
MAX_CURVE_POINTS = 200
_RESAMPLES_AT_ONCE = 100  # bootstrap resamples scored in one call (memory: 100 × images × kinds floats)
SCORE_COLUMNS = SCORE_KINDS


class EvaluationError(ValueError):
    """The score table cannot be evaluated; the message says why."""


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if labels.any() and (~labels).any() else None


def bootstrap_aurocs(labels: np.ndarray, values: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """n × k AUROCs of the k columns of ``values`` on paired resamples of the images,
    stratified so that each resample holds both classes."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, bool)
    values = np.asarray(values, dtype=np.float64).reshape(len(labels), -1)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    picks = [(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(n)]
    out = np.empty((n, values.shape[1]))
    # AUROC = Mann–Whitney U of the anomalies' scores against the normals' / (P·N), ties
    # counted half as roc_auc_score counts them; all resamples of a chunk in one call
    # (sklearn's per-call checks cost more than the AUROC itself).
    for start in range(0, n, _RESAMPLES_AT_ONCE):
        block = picks[start:start + _RESAMPLES_AT_ONCE]
        a, b = values[np.stack([p for p, _ in block])], values[np.stack([q for _, q in block])]
        out[start:start + len(block)] = mannwhitneyu(a, b, axis=1, method="asymptotic").statistic / (len(pos) * len(neg))
    return out


def auroc_interval(labels: np.ndarray, scores: np.ndarray, n: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float] | None:
    """The bootstrap ``level`` interval of the AUROC (None without both classes)."""
    labels = np.asarray(labels, bool)
    if not (labels.any() and (~labels).any()):
        return None
    boot = bootstrap_aurocs(labels, scores, n, seed)[:, 0]
    tail = (1 - level) / 2
    return float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail))


def _auprc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    # Average precision can exceed 1 by a rounding error; keep it a probability.
    return min(1.0, float(average_precision_score(labels, scores))) if labels.any() else None


def brightness_bins(brightness: pd.Series, n_bins: int = N_BRIGHTNESS_BINS) -> pd.Series:
    """Quantile bin per image, 0 = darkest."""
    return pd.qcut(brightness.rank(method="first"), n_bins, labels=False)


def _labelled(table: pd.DataFrame, score_column: str) -> pd.DataFrame:
    required = {"label", "brightness", score_column}
    missing = required - set(table.columns)
    if missing:
        raise EvaluationError(f"score table lacks column(s) {sorted(missing)}; make it with 'danvae score'")
    known = table[table["label"].isin(["normal", "anomaly"])].reset_index(drop=True)
    if known.empty:
        raise EvaluationError("no image in the score table has a normal/anomaly label to evaluate against")
    if not np.isfinite(known[score_column].to_numpy(dtype=float)).all():
        raise EvaluationError(f"score column {score_column!r} holds NaN or infinite values")
    return known


def _decisions(known: pd.DataFrame, score_column: str, threshold: float | None) -> np.ndarray | None:
    """Per-image call: from ``threshold`` when given, else the table's ``is_anomaly`` column."""
    if threshold is not None:
        return known[score_column].to_numpy(dtype=float) >= threshold
    if "is_anomaly" in known:
        return known["is_anomaly"].astype(str).str.lower().isin(["true", "1", "1.0"]).to_numpy()
    return None


def darkest_normal_fpr(table: pd.DataFrame, predicted: np.ndarray, n_bins: int = N_BRIGHTNESS_BINS) -> float | None:
    """False-positive rate at the threshold on the darkest 1/n_bins of the normal images
    (rows of ``table`` aligned with ``predicted``)."""
    normal = (table["label"] == "normal").to_numpy()
    if not normal.any():
        return None
    bright = table["brightness"][normal].reset_index(drop=True)
    bins = brightness_bins(bright, min(n_bins, len(bright))).to_numpy()
    return float(predicted[normal][bins == 0].mean())


def _per_bin(metric, labels: np.ndarray, scores: np.ndarray, bins: np.ndarray, n_bins: int) -> list[float | None]:
    return [metric(labels[bins == b], scores[bins == b]) for b in range(n_bins)]


def _spearman(factor: pd.Series, scores: pd.Series) -> float | None:
    """Spearman's ρ of the scores with a factor (None with under 3 values or either constant)."""
    if len(factor) < 3 or factor.nunique() < 2 or scores.nunique() < 2:
        return None
    return _finite(spearmanr(factor, scores).statistic)


def evaluate_scores(table: pd.DataFrame, score_column: str = "score", threshold: float | None = None) -> dict:
    """AUROC, AUPRC, F1/precision/recall at the threshold, per-quintile AUROC and AUPRC,
    false-positive rates (all normals, darkest normal quintile), brightness bias of the
    score among normals. Values are numbers, ``None`` where undefined, or per-quintile lists.

    The decision at the threshold comes from ``threshold`` when given, else from the
    table's ``is_anomaly`` column; without either the threshold metrics are left out.
    """
    known = _labelled(table, score_column)
    labels = (known["label"] == "anomaly").to_numpy()
    scores = known[score_column].to_numpy(dtype=float)
    metrics: dict = {"n_images": int(len(known)), "n_anomalies": int(labels.sum()), "auroc": _auroc(labels, scores),
                     "auprc": _auprc(labels, scores)}
    metrics["auroc_low"], metrics["auroc_high"] = auroc_interval(labels, scores) or (None, None)
    pred = _decisions(known, score_column, threshold)
    if pred is not None:
        metrics.update(f1=float(f1_score(labels, pred, zero_division=0)),
                       precision=float(precision_score(labels, pred, zero_division=0)),
                       recall=float(recall_score(labels, pred, zero_division=0)),
                       flagged_share=float(pred.mean()),
                       fpr=float(pred[~labels].mean()) if (~labels).any() else None,
                       fpr_darkest=darkest_normal_fpr(known, pred))
        if threshold is not None:
            metrics["threshold"] = float(threshold)
    n_bins = min(N_BRIGHTNESS_BINS, len(known))
    bins = brightness_bins(known["brightness"], n_bins).to_numpy()
    metrics["auroc_by_brightness"] = _per_bin(_auroc, labels, scores, bins, n_bins)
    metrics["auprc_by_brightness"] = _per_bin(_auprc, labels, scores, bins, n_bins)
    metrics["auroc_darkest"] = metrics["auroc_by_brightness"][0]
    metrics["auprc_darkest"] = metrics["auprc_by_brightness"][0]
    metrics["auroc_rest"] = _auroc(labels[bins != 0], scores[bins != 0]) if n_bins > 1 else None
    normal = known[~labels]
    metrics["brightness_spearman_normal"] = _spearman(normal["brightness"], normal[score_column])
    if "nuisance" in known.columns:  # a recorded nuisance factor (data.nuisance): the same, per its quintile
        bins = brightness_bins(known["nuisance"], n_bins).to_numpy()
        metrics["auroc_by_nuisance"] = _per_bin(_auroc, labels, scores, bins, n_bins)
        metrics["nuisance_spearman_normal"] = _spearman(normal["nuisance"], normal[score_column])
    return metrics


def auroc_by_score(table: pd.DataFrame, columns: Sequence[str] = SCORE_COLUMNS) -> dict[str, float]:
    """AUROC of every score kind present in the table (those with both classes and finite values)."""
    known = table[table["label"].isin(["normal", "anomaly"])]
    labels = (known["label"] == "anomaly").to_numpy()
    out = {}
    for c in columns:
        if c in known and np.isfinite(known[c].to_numpy(dtype=float)).all():
            value = _auroc(labels, known[c].to_numpy(dtype=float))
            if value is not None:
                out[c] = value
    return out


# ---- plot data ---------------------------------------------------------------------
def _downsample(n: int, max_points: int) -> np.ndarray:
    """Indices keeping the first and last point, at most ``max_points`` in all."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def roc_points(labels: np.ndarray, scores: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> list[dict]:
    """ROC curve rows ``{fpr, tpr, threshold}`` (threshold ``None`` at the (0, 0) start)."""
    labels = np.asarray(labels, bool)
    if not (labels.any() and (~labels).any()):
        return []
    fpr, tpr, thr = roc_curve(labels, scores)
    return [{"fpr": float(fpr[i]), "tpr": float(tpr[i]), "threshold": _finite(float(thr[i]))}
            for i in _downsample(len(fpr), max_points)]


def pr_points(labels: np.ndarray, scores: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> list[dict]:
    """Precision-recall curve rows ``{recall, precision}``, recall rising."""
    labels = np.asarray(labels, bool)
    if not labels.any():
        return []
    precision, recall, _ = precision_recall_curve(labels, scores)
    precision, recall = precision[::-1], recall[::-1]
    keep = _downsample(len(recall), max_points)
    return [{"recall": float(recall[i]), "precision": float(precision[i])} for i in keep]


def quintile_rows(table: pd.DataFrame, score_column: str = "score") -> list[dict]:
    """One row per brightness bin of the labelled images (0 = darkest):
    ``{bin, brightness_min, brightness_max, auroc, auprc, n, n_anomalies}``."""
    known = _labelled(table, score_column)
    labels = (known["label"] == "anomaly").to_numpy()
    scores = known[score_column].to_numpy(dtype=float)
    bright = known["brightness"].to_numpy(dtype=float)
    n_bins = min(N_BRIGHTNESS_BINS, len(known))
    bins = brightness_bins(known["brightness"], n_bins).to_numpy()
    rows = []
    for b in range(n_bins):
        sel = bins == b
        rows.append({"bin": int(b),
                     "brightness_min": float(bright[sel].min()), "brightness_max": float(bright[sel].max()),
                     "auroc": _auroc(labels[sel], scores[sel]), "auprc": _auprc(labels[sel], scores[sel]),
                     "n": int(sel.sum()), "n_anomalies": int(labels[sel].sum())})
    return rows


def score_brightness_points(table: pd.DataFrame, score_column: str = "score") -> list[dict]:
    """``{brightness, score}`` for every normal image, darkest first."""
    known = _labelled(table, score_column)
    normal = known[known["label"] == "normal"].sort_values("brightness")
    return [{"brightness": float(b), "score": float(s)} for b, s in zip(normal["brightness"], normal[score_column])]


def plot_data(table: pd.DataFrame, score_column: str = "score") -> dict[str, list[dict]]:
    """Everything the curves and bar charts are drawn from, as lists of row dicts:
    ``roc``, ``pr``, ``auroc_by_brightness`` and ``score_vs_brightness``."""
    known = _labelled(table, score_column)
    labels = (known["label"] == "anomaly").to_numpy()
    scores = known[score_column].to_numpy(dtype=float)
    return {"roc": roc_points(labels, scores), "pr": pr_points(labels, scores),
            "auroc_by_brightness": quintile_rows(known, score_column),
            "score_vs_brightness": score_brightness_points(known, score_column)}


# ---- pixel level -------------------------------------------------------------------
def resize_masks(masks: Sequence[np.ndarray | None] | np.ndarray, size: int) -> np.ndarray:
    """Bool masks N×size×size; ``None`` entries (images without a mask, e.g. normals) are empty.
    Resized with bilinear interpolation and cut at half, as the images were resized."""
    out = np.zeros((len(masks), size, size), bool)
    for i, m in enumerate(masks):
        if m is None:
            continue
        m = np.asarray(m)
        if m.ndim == 3:
            m = m.max(axis=-1)
        m = (m > 0).astype(np.float32)
        if m.shape != (size, size):
            m = np.asarray(Image.fromarray(m, mode="F").resize((size, size), Image.Resampling.BILINEAR))
        out[i] = m >= 0.5
    return out


def pixel_auroc(heatmaps: np.ndarray, masks: np.ndarray) -> float | None:
    """AUROC over every pixel of ``heatmaps`` (N×H×W) against bool ``masks`` of the same
    shape; ``None`` without both defect and clean pixels."""
    heatmaps, masks = np.asarray(heatmaps), np.asarray(masks, bool)
    if heatmaps.shape != masks.shape:
        raise EvaluationError(f"heatmaps {heatmaps.shape} and masks {masks.shape} differ in shape")
    return _auroc(masks.ravel(), heatmaps.ravel().astype(np.float64))
