"""``report.md``: a run's numbers, per-quintile and per-score tables, its figures and a link to
the data's validation, as markdown."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from danvae.detector import Detector

FIGURES = {
    "roc": "ROC curve",
    "pr": "Precision-recall curve",
    "auroc_by_brightness": "AUROC and AUPRC per brightness quintile",
    "score_vs_brightness": "Anomaly score against brightness (normal images)",
    "reconstructions": "Reconstructions",
    "heatmaps": "Anomaly heatmaps (the map behind the score kind) over defective images",
    "zy_traversal": "z_y traversal along brightness",
}


def markdown_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(markdown_value(v) for v in value)
    return str(value)


def write_report(path: Path, detector: Detector, metrics: dict, quintiles: list[dict], figures: dict[str, Path],
                 notes: Sequence[str], data_docs: str | Path | None = None) -> Path:
    """``report.md``: the headline numbers, per-quintile and per-score tables, the figures, and a
    link to the Data Docs page of the data's validation (``data_docs``) when there is one."""
    cfg = detector.model_config
    lines = [
        f"# Evaluation: {cfg.name} (z_x {cfg.zx_dim}" + (f", z_y {cfg.zy_dim}" if cfg.name == "danvae" else "") + ")",
        "",
        f"Score kind `{detector.score_kind}`, threshold {markdown_value(detector.threshold)} "
        f"({detector.threshold_method or 'n/a'}); {metrics['n_images']} labelled test images, "
        f"{metrics['n_anomalies']} anomalies.",
        "",
        "## Metrics",
        "",
        "| metric | value | what it says |",
        "|---|---|---|",
    ]
    explain = {
        "auroc": "ranking of anomalies above normals, all images",
        "auprc": "average precision, all images",
        "f1": "at the calibrated threshold", "precision": "at the calibrated threshold",
        "recall": "at the calibrated threshold", "fpr": "false alarms among all normal images",
        "fpr_darkest": "false alarms among the darkest fifth of normal images",
        "auroc_darkest": "AUROC in the darkest brightness quintile", "auroc_rest": "AUROC in the other quintiles",
        "auprc_darkest": "AUPRC in the darkest brightness quintile",
        "brightness_spearman_normal": "score vs brightness among normals (near 0 is good)",
        "pixel_auroc": "heatmap vs defect mask, every pixel",
        "r2_zy": "brightness from z_y, held out (high is good)",
        "r2_zx": "brightness from z_x, held out (near 0 is good)",
        "mi_zy_max": "mutual information, best z_y dimension (nats)", "mi_zy_mean": "mean over z_y dimensions",
        "mi_zx_max": "mutual information, best z_x dimension (nats)", "mi_zx_mean": "mean over z_x dimensions",
    }
    for key, text in explain.items():
        lines.append(f"| {key} | {markdown_value(metrics.get(key))} | {text} |")
    lines += ["", "## Per brightness quintile", "",
              "| bin | brightness | n | anomalies | AUROC | AUPRC |", "|---|---|---|---|---|---|"]
    for r in quintiles:
        lines.append(f"| {r['bin']} | {r['brightness_min']:.3f}–{r['brightness_max']:.3f} | {r['n']} | "
                     f"{r['n_anomalies']} | {markdown_value(r['auroc'])} | {markdown_value(r['auprc'])} |")
    if metrics.get("auroc_by_nuisance"):
        name = getattr(detector, "nuisance", "nuisance")
        lines += ["", f"## Per {name} quintile (the nuisance factor, data.nuisance)", "",
                  f"ρ(score, {name}) among normals: {markdown_value(metrics.get('nuisance_spearman_normal'))}", "",
                  "| bin | AUROC |", "|---|---|"]
        lines += [f"| {b} | {markdown_value(v)} |" for b, v in enumerate(metrics["auroc_by_nuisance"])]
    if metrics.get("auroc_by_score"):
        lines += ["", "## AUROC per score kind", "", "| score | AUROC |", "|---|---|"]
        for k, v in metrics["auroc_by_score"].items():
            mark = " (used)" if k == detector.score_kind else ""
            lines.append(f"| {k}{mark} | {markdown_value(v)} |")
    lines += ["", "## Figures", ""]
    for name, title in FIGURES.items():
        if name in figures:
            rel = figures[name].relative_to(path.parent).as_posix()
            lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    if data_docs is not None:
        rel = Path(os.path.relpath(Path(data_docs).resolve(), path.parent.resolve())).as_posix()
        lines += ["## Data validation", "",
                  f"The Great Expectations suite's result on this data, every expectation with what it "
                  f"observed: [Data Docs]({rel}).", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(lines))
    return path
