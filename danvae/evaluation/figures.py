"""Figures for an evaluated run, as small PNG files (matplotlib, no display needed).

    roc_figure(plots["roc"], "figures/roc.png", auroc=0.97)
    traversal_figure(traversal_images(det, imgs), "figures/zy_traversal.png", originals=imgs)

Every function takes plain data (row dicts from :mod:`danvae.evaluation.metrics`, uint8 images
N×H×W×C) and a path, writes one PNG and returns its path. Figures are drawn through
``matplotlib.figure.Figure`` directly, so nothing here touches pyplot's global state or
needs a display backend.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from danvae.evaluation.disentanglement import traversal_images  # noqa: F401  (re-exported: figures' data)
from danvae.images import brightness

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.typing import LegendLocType

DPI = 110
__all__ = ["roc_figure", "pr_figure", "auroc_by_brightness_figure", "score_vs_brightness_figure",
           "reconstructions_figure", "heatmaps_figure", "traversal_figure", "traversal_images"]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _show(ax, img: np.ndarray) -> None:
    """Draw a uint8 H×W×C (C = 1 or 3) image without axes."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ---- curves and charts -------------------------------------------------------------
def _curve_figure(path: str | Path, curve: tuple[list, list] | None, label: str, missing: str, legend: LegendLocType,
                  chance: Callable[[Axes], None], **axes: Any) -> Path:
    """A curve in the unit square (``missing`` written instead when there is none), over ``chance(ax)``."""
    fig = Figure(layout="constrained", figsize=(3.6, 3.4))
    ax = fig.add_subplot()
    chance(ax)
    if curve:
        ax.plot(*curve, lw=2, label=label)
    else:
        ax.text(0.5, 0.5, missing, ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), **axes)
    ax.legend(loc=legend, fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def roc_figure(rows: Sequence[dict], path: str | Path, auroc: float | None = None, title: str = "ROC") -> Path:
    def chance(ax: Axes) -> None:
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="chance")

    curve = ([r["fpr"] for r in rows], [r["tpr"] for r in rows]) if rows else None
    return _curve_figure(path, curve, f"AUROC {_fmt(auroc)}", "needs normal and anomalous images", "lower right",
                         chance, xlabel="false-positive rate", ylabel="true-positive rate", title=title)


def pr_figure(rows: Sequence[dict], path: str | Path, auprc: float | None = None, base_rate: float | None = None,
              title: str = "Precision-recall") -> Path:
    def chance(ax: Axes) -> None:
        if base_rate is not None:
            ax.axhline(base_rate, color="0.7", lw=1, ls="--", label=f"chance ({base_rate:.2f})")

    curve = ([r["recall"] for r in rows], [r["precision"] for r in rows]) if rows else None
    return _curve_figure(path, curve, f"AUPRC {_fmt(auprc)}", "needs anomalous images", "lower left", chance,
                         xlabel="recall", ylabel="precision", title=title)


def auroc_by_brightness_figure(rows: Sequence[dict], path: str | Path, overall: float | None = None) -> Path:
    """Grouped bars of AUROC and AUPRC per brightness quintile (darkest left)."""
    fig = Figure(layout="constrained", figsize=(5.2, 3.4))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    w = 0.38
    for shift, key, colour in ((-w / 2, "auroc", "C0"), (w / 2, "auprc", "C1")):
        values = [r[key] if r[key] is not None else 0.0 for r in rows]
        bars = ax.bar(x + shift, values, w, color=colour, label=key.upper())
        for bar, r in zip(bars, rows):
            if r[key] is None:
                ax.text(bar.get_x() + bar.get_width() / 2, 0.02, "n/a", ha="center", fontsize=7, rotation=90)
    if overall is not None:
        ax.axhline(overall, color="C0", ls=":", lw=1, label=f"overall AUROC {overall:.3f}")
    ax.set_xticks(x, [f"{r['brightness_min']:.2f}–{r['brightness_max']:.2f}\n{r['n_anomalies']}/{r['n']} anom."
                      for r in rows], fontsize=7)
    ax.set(ylim=(0, 1.22), ylabel="AUROC / AUPRC", xlabel="brightness quintile (darkest left)",
           title="Detection by brightness")
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(fontsize=7, loc="upper center", ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def score_vs_brightness_figure(points: Sequence[dict], path: str | Path, rho: float | None = None,
                               threshold: float | None = None, score_kind: str | None = None) -> Path:
    fig = Figure(layout="constrained", figsize=(4.2, 3.4))
    ax = fig.add_subplot()
    ax.scatter([p["brightness"] for p in points], [p["score"] for p in points], s=10, alpha=0.7)
    if threshold is not None:
        ax.axhline(threshold, color="C3", ls="--", lw=1, label="threshold")
        ax.legend(fontsize=8)
    ax.set(xlabel="brightness", ylabel=f"score ({score_kind})" if score_kind else "score",
           title=f"Normal images: Spearman ρ = {_fmt(rho, 2)}")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---- image grids -------------------------------------------------------------------
def reconstructions_figure(originals: np.ndarray, reconstructions: np.ndarray, path: str | Path,
                           titles: Sequence[str] | None = None) -> Path:
    """Two rows: originals above, reconstructions below."""
    n = len(originals)
    fig = Figure(layout="constrained", figsize=(1.15 * max(n, 2) + 0.6, 2.6))
    axes = fig.subplots(2, max(n, 1), squeeze=False)
    for i in range(n):
        _show(axes[0, i], originals[i])
        _show(axes[1, i], reconstructions[i])
        if titles:
            axes[0, i].set_title(titles[i], fontsize=7)
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("reconstruction", fontsize=8)
    fig.suptitle("Reconstructions", fontsize=9)
    return _save(fig, path)


def heatmaps_figure(images: np.ndarray, heatmaps: np.ndarray, path: str | Path, masks: np.ndarray | None = None,
                    titles: Sequence[str] | None = None) -> Path:
    """Per image (a column): the image, its anomaly heatmap over it, the defect
    mask (when given). One colour scale for all heatmaps, so intensities compare."""
    n = len(images)
    rows = 3 if masks is not None else 2
    fig = Figure(layout="constrained", figsize=(1.15 * max(n, 2) + 0.6, 1.25 * rows + 0.4))
    axes = fig.subplots(rows, max(n, 1), squeeze=False)
    vmax = float(np.quantile(heatmaps, 0.995)) if len(heatmaps) else 1.0
    vmax = vmax if vmax > 0 else 1.0
    for i in range(n):
        _show(axes[0, i], images[i])
        axes[1, i].imshow(np.asarray(images[i]).max(axis=-1), cmap="gray", vmin=0, vmax=255)
        im = axes[1, i].imshow(heatmaps[i], cmap="inferno", alpha=0.6, vmin=0, vmax=vmax)
        axes[1, i].set_xticks([])
        axes[1, i].set_yticks([])
        if masks is not None:
            axes[2, i].imshow(masks[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[2, i].set_xticks([])
            axes[2, i].set_yticks([])
        if titles:
            axes[0, i].set_title(titles[i], fontsize=7)
    if n:
        bar = fig.colorbar(im, ax=axes[1, :], shrink=0.9, pad=0.01)
        bar.set_label("squared error", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel("image", fontsize=8)
    axes[1, 0].set_ylabel("anomaly map", fontsize=8)
    if masks is not None:
        axes[2, 0].set_ylabel("defect mask", fontsize=8)
    fig.suptitle("Where the model sees the defect", fontsize=9)
    return _save(fig, path)


def traversal_figure(decoded: np.ndarray, path: str | Path, originals: np.ndarray | None = None,
                     levels: Sequence[float] | np.ndarray | None = None) -> Path:
    """Rows: input images; columns: the traversal from dark to bright (``decoded`` is
    N×K×H×W×C from :func:`traversal_images`), after the original when given. Each cell is
    captioned with its decoded brightness."""
    n, k = decoded.shape[:2]
    extra = 1 if originals is not None else 0
    fig = Figure(layout="constrained", figsize=(1.0 * (k + extra) + 0.5, 1.1 * n + 0.7))
    axes = fig.subplots(n, k + extra, squeeze=False)
    for i in range(n):
        if originals is not None:
            _show(axes[i, 0], originals[i])
            axes[i, 0].set_xlabel(f"{brightness(originals[i][None])[0]:.2f}", fontsize=7, labelpad=1)
        for j in range(k):
            ax = axes[i, j + extra]
            _show(ax, decoded[i, j])
            ax.set_xlabel(f"{brightness(decoded[i, j][None])[0]:.2f}", fontsize=7, labelpad=1)
    if originals is not None:
        axes[0, 0].set_title("original", fontsize=7)
    for j in range(k):
        axes[0, j + extra].set_title(f"y={levels[j]:.2f}" if levels is not None else f"step {j + 1}", fontsize=7)
    fig.suptitle("z_y traversal along brightness (z_x fixed); captions: decoded brightness", fontsize=8)
    return _save(fig, path)
