"""Evaluate one trained detector on test images and write everything a run reports.

    result = evaluate_run(det, test.images, test.table, train_images=train.images,
                          train_brightness=train.table["brightness"], masks=masks, out_dir="reports")
    result["metrics"]["auroc_darkest"], result["files"]   # log these to MLflow

Written under ``out_dir``:

* ``metrics.json``: the headline numbers (:data:`HEADLINE_KEYS`, ``None`` where undefined),
  one flat row that ``dvc metrics show`` can print in a terminal;
* ``metrics_full.json``: every number: the headline, per-quintile lists, mutual information
  and one nested dict of numbers (``auroc_by_score``);
* ``plots/roc.json`` (x ``fpr``, y ``tpr``), ``plots/pr.json`` (x ``recall``, y ``precision``),
  ``plots/auroc_by_brightness.json`` (x ``bin``, y ``auroc``), ``plots/score_vs_brightness.json``
  (x ``brightness``, y ``score``): JSON lists of row dicts, for ``dvc plots show``;
* ``figures/*.png`` (see :data:`danvae.evaluation.markdown.FIGURES`) and ``report.md`` gathering
  numbers and figures.

No DVC or MLflow import here: callers (the pipeline stage, a notebook) log the files.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from danvae.evaluation.disentanglement import (NoNuisanceLatent, disentanglement_metrics, traversal_images,
                                               traversal_levels)
from danvae.evaluation.figures import (auroc_by_brightness_figure, heatmaps_figure, pr_figure,
                                       reconstructions_figure, roc_figure, score_vs_brightness_figure, traversal_figure)
from danvae.evaluation.markdown import write_report
from danvae.evaluation.metrics import (SCORE_COLUMNS, EvaluationError, auroc_by_score, evaluate_scores, pixel_auroc,
                                       plot_data, resize_masks)
from danvae.images import fit_to

if TYPE_CHECKING:
    from danvae.detector import Detector

PLOTS = ("roc", "pr", "auroc_by_brightness", "score_vs_brightness")
METRIC_KEYS = (
    "n_images", "n_anomalies", "auroc", "auprc", "f1", "precision", "recall", "flagged_share", "threshold",
    "fpr", "fpr_darkest", "auroc_darkest", "auroc_rest", "auprc_darkest", "auroc_by_brightness",
    "auprc_by_brightness", "brightness_spearman_normal", "pixel_auroc", "r2_zy", "r2_zx",
    "mi_zy_max", "mi_zy_mean", "mi_zx_max", "mi_zx_mean", "auroc_by_score",
)
# what `dvc metrics show` prints: enough to judge a run, few enough to fit a terminal
HEADLINE_KEYS = (
    "n_images", "n_anomalies", "auroc", "auroc_low", "auroc_high", "auroc_darkest", "auprc", "f1", "recall",
    "fpr", "fpr_darkest", "pixel_auroc", "brightness_spearman_normal", "r2_zx", "r2_zy",
)
N_EXAMPLES = 6
N_TRAVERSAL = 4


def _clean(value):
    """JSON-safe: numpy scalars to Python, NaN/inf to None, recursively."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def headline(metrics: dict) -> dict:
    """The :data:`HEADLINE_KEYS` of ``metrics``, in that order (``dvc metrics show`` rounds them)."""
    return {k: metrics[k] for k in HEADLINE_KEYS if k in metrics}


def _write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(data), indent=1, allow_nan=False))
    return path


def _scored_table(detector, images: np.ndarray, test_table: pd.DataFrame, heatmaps: np.ndarray | None = None
                  ) -> tuple[pd.DataFrame, np.ndarray]:
    """The test table with any missing score columns filled by the detector, and heatmaps. A
    complete table given with its heatmaps is used as it is: the images are not scored again."""
    if len(test_table) != len(images):
        raise EvaluationError(f"{len(images)} test images but {len(test_table)} rows in the test table")
    if "label" not in test_table:
        raise EvaluationError("the test table needs a 'label' column (normal/anomaly)")
    table = test_table.reset_index(drop=True).copy()
    complete = all(c in table for c in ("brightness", "score", "is_anomaly", *SCORE_COLUMNS))
    if heatmaps is not None:
        if heatmaps.shape != (len(images), *images.shape[1:3]):
            raise EvaluationError(f"heatmaps of shape {heatmaps.shape} for {len(images)} test images of "
                                  f"{images.shape[1]}×{images.shape[2]} px")
        if complete:
            return table, heatmaps
    nuisance = table["nuisance"].to_numpy(dtype=float) if "nuisance" in table else None
    scored, heatmaps = detector.score_table(images, heatmaps=True, nuisance=nuisance)
    for column in ("brightness", "score", "is_anomaly", *SCORE_COLUMNS):
        if column not in table and column in scored:
            table[column] = scored[column].to_numpy()
    if "score" not in table:
        raise EvaluationError("the detector is not calibrated (no score kind): call detector.calibrate() first")
    return table, heatmaps


def _spread(order: np.ndarray, k: int) -> np.ndarray:
    """``k`` entries of ``order`` evenly spaced from first to last."""
    if len(order) <= k:
        return order
    return order[np.linspace(0, len(order) - 1, k).round().astype(int)]


def _example_indices(table: pd.DataFrame, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Normals spread over brightness (darkest first), and anomalies covering the defect kinds."""
    bright = table["brightness"].to_numpy(dtype=float)
    normal = np.flatnonzero((table["label"] == "normal").to_numpy())
    normal = _spread(normal[np.argsort(bright[normal], kind="stable")], n)
    anomaly = np.flatnonzero((table["label"] == "anomaly").to_numpy())
    if "defect" in table and len(anomaly):
        # Round-robin over defect kinds so each kind shows up.
        groups = [list(g) for _, g in pd.Series(anomaly).groupby(table["defect"].to_numpy()[anomaly])]
        picked: list[int] = []
        while len(picked) < min(n, len(anomaly)):
            for g in groups:
                if g and len(picked) < n:
                    picked.append(int(g.pop(0)))
        anomaly = np.array(picked, int)
    return normal, anomaly[:n]


def _caption(table: pd.DataFrame, i: int) -> str:
    label = str(table["label"].iloc[i])
    defect = str(table["defect"].iloc[i]) if "defect" in table and label == "anomaly" else ""
    return f"{defect or label}\ny={float(table['brightness'].iloc[i]):.2f}"


def evaluate_run(detector: Detector, test_images: np.ndarray, test_table: pd.DataFrame, *,
                 train_images: np.ndarray | None = None, train_brightness: np.ndarray | Sequence[float] | None = None,
                 masks: np.ndarray | Sequence[np.ndarray | None] | None = None, out_dir: str | Path,
                 heatmaps: np.ndarray | None = None, traversal_steps: int = 7,
                 data_docs: str | Path | None = None) -> dict:
    """Metrics, plot data, figures and ``report.md`` for ``detector`` on the test images.

    ``test_table`` rows align with ``test_images`` and hold at least ``label``
    (normal/anomaly/unknown); ``brightness``, ``score``, ``is_anomaly`` and the score-kind
    columns are taken from it when present and computed with ``detector.score_table``
    otherwise. ``train_images`` (with their ``train_brightness``; computed when omitted)
    are where the R² regressions and the traversal's brightness line are fitted; without
    them, cross-validation on the test images. ``masks`` (N×H×W any size, or a list with
    ``None`` for images without one) give the pixel AUROC. ``heatmaps`` (N×H×W at the model's
    image size, as ``detector.heatmaps`` returns) with a table that holds every score column
    spare the detector a second pass over the test images. ``data_docs``: the Data Docs page
    of the data's validation, linked from the report.

    Returns ``{"metrics": dict, "files": [paths written], "notes": [str]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = fit_to(test_images, detector.image_size, detector.channels)
    table, heatmaps = _scored_table(detector, images, test_table, heatmaps)
    notes: list[str] = []
    files: list[Path] = []

    threshold = detector.threshold if "is_anomaly" not in test_table else None
    metrics = evaluate_scores(table, "score", threshold=threshold)
    metrics["threshold"] = detector.threshold
    metrics["auroc_by_score"] = auroc_by_score(table)
    mask_arr = None
    if masks is not None:
        if len(masks) != len(images):
            raise EvaluationError(f"{len(masks)} masks for {len(images)} test images")
        mask_arr = resize_masks(masks, detector.image_size)
        metrics["pixel_auroc"] = pixel_auroc(heatmaps, mask_arr)
    else:
        notes.append("No defect masks were given: no pixel AUROC.")

    if train_images is None:
        notes.append("No training images were given: R² is 5-fold cross-validated on the test images.")
    metrics.update(disentanglement_metrics(
        detector, images, table["brightness"].to_numpy(dtype=float), train_images=train_images,
        train_brightness=None if train_brightness is None else np.asarray(train_brightness, float)))
    metrics = {k: metrics.get(k) for k in METRIC_KEYS} | {k: v for k, v in metrics.items() if k not in METRIC_KEYS}
    metrics = _clean(metrics)
    files.append(_write_json(out / "metrics_full.json", metrics))
    files.append(_write_json(out / "metrics.json", headline(metrics)))

    plots = plot_data(table, "score")
    for name in PLOTS:
        files.append(_write_json(out / "plots" / f"{name}.json", plots[name]))

    fig_dir = out / "figures"
    figures: dict[str, Path] = {}
    known = table["label"].isin(["normal", "anomaly"])
    base_rate = float((table["label"][known] == "anomaly").mean()) if known.any() else None
    figures["roc"] = roc_figure(plots["roc"], fig_dir / "roc.png", metrics["auroc"],
                                title=f"ROC: {detector.model_config.name}, {detector.score_kind}")
    figures["pr"] = pr_figure(plots["pr"], fig_dir / "pr.png", metrics["auprc"], base_rate,
                              title=f"Precision-recall: {detector.model_config.name}")
    figures["auroc_by_brightness"] = auroc_by_brightness_figure(
        plots["auroc_by_brightness"], fig_dir / "auroc_by_brightness.png", metrics["auroc"])
    figures["score_vs_brightness"] = score_vs_brightness_figure(
        plots["score_vs_brightness"], fig_dir / "score_vs_brightness.png", metrics["brightness_spearman_normal"],
        detector.threshold, detector.score_kind)

    normal_idx, anomaly_idx = _example_indices(table, N_EXAMPLES)
    shown = np.r_[_spread(normal_idx, N_EXAMPLES // 2 if len(anomaly_idx) else N_EXAMPLES),
                  anomaly_idx[:N_EXAMPLES - N_EXAMPLES // 2]].astype(int)
    figures["reconstructions"] = reconstructions_figure(images[shown], detector.reconstruct(images[shown]),
                                                        fig_dir / "reconstructions.png",
                                                        [_caption(table, i) for i in shown])
    if len(anomaly_idx):
        figures["heatmaps"] = heatmaps_figure(images[anomaly_idx], heatmaps[anomaly_idx], fig_dir / "heatmaps.png",
                                              None if mask_arr is None else mask_arr[anomaly_idx],
                                              [_caption(table, i) for i in anomaly_idx])
    else:
        notes.append("No labelled anomaly among the test images: no heatmap figure.")

    trav = _spread(normal_idx, N_TRAVERSAL) if len(normal_idx) else np.arange(min(N_TRAVERSAL, len(images)))
    ref_images = images if train_images is None else train_images
    ref_y = table["brightness"].to_numpy(dtype=float) if train_images is None else (
        None if train_brightness is None else np.asarray(train_brightness, float))
    try:
        decoded = traversal_images(detector, images[trav], traversal_steps, reference_images=ref_images,
                                   reference_brightness=ref_y)
        levels = traversal_levels(detector, ref_images, ref_y, traversal_steps)
        figures["zy_traversal"] = traversal_figure(decoded, fig_dir / "zy_traversal.png", images[trav], levels)
    except NoNuisanceLatent:
        notes.append(f"Model '{detector.model_config.name}' has no z_y latent: no z_y traversal figure, "
                     "and the z_y R² and mutual information are n/a (its single latent is reported as z_x).")
    except ValueError as exc:
        notes.append(f"No z_y traversal figure: {exc}.")
    files += list(figures.values())

    quintiles = plots["auroc_by_brightness"]
    files.append(write_report(out / "report.md", detector, metrics, quintiles, figures, notes, data_docs))
    return {"metrics": metrics, "files": [str(f) for f in files], "notes": notes}
