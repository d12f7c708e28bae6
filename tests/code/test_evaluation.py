"""Evaluation of a trained run: metrics, plot data, figures, report, disentanglement, traversal.

One tiny DAn-VAE (and a shorter VAE baseline) is trained once per module on easy 32 px
surfaces; everything else reads from it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MPLCONFIGDIR", str(Path(__file__).resolve().parents[2] / ".cache" / "matplotlib"))

from danvae import Detector  # noqa: E402
from danvae.config import ModelConfig, TrainConfig  # noqa: E402
from danvae.data.folders import discover, pack  # noqa: E402
from danvae.data.labelled import load_folder  # noqa: E402
from danvae.data.synthetic import generate_surfaces  # noqa: E402
from danvae.evaluation.disentanglement import (NoNuisanceLatent, brightness_line, held_out_r2,  # noqa: E402
                                               traversal_images)
from danvae.evaluation.metrics import (EvaluationError, bootstrap_aurocs, evaluate_scores,  # noqa: E402
                                       pixel_auroc, pr_points, resize_masks, roc_points)
from danvae.evaluation.markdown import FIGURES  # noqa: E402
from danvae.evaluation.report import HEADLINE_KEYS, METRIC_KEYS, PLOTS, evaluate_run  # noqa: E402
from danvae.images import brightness  # noqa: E402

SIZE = 32
TRAIN = TrainConfig(epochs=25, warmup_epochs=6, batch_size=32, seed=0)


def _strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    kw = dict(size=SIZE, dark_share=0.25, difficulty="easy", materials=["brushed_metal"])
    generate_surfaces(root / "train", n_normal=150, n_anomaly=30, seed=1, **kw)
    generate_surfaces(root / "test", n_normal=70, n_anomaly=30, seed=2, **kw)
    return pack(discover(root / "train"), SIZE), load_folder(root / "test", SIZE)  # the test split with its masks


def _fit(name: str, train, cfg: TrainConfig) -> Detector:
    labels = (train.table["label"] == "anomaly").to_numpy()
    return Detector(ModelConfig(name=name, zx_dim=16, zy_dim=4), image_size=SIZE, train=cfg).fit(
        train.images, labels, progress=False)


@pytest.fixture(scope="module")
def danvae_model(surfaces):
    return _fit("danvae", surfaces[0], TRAIN)


@pytest.fixture(scope="module")
def danvae_run(danvae_model, surfaces, tmp_path_factory):
    train, test = surfaces
    masks = test.masks
    assert masks is not None and int(masks.any(axis=(1, 2)).sum()) == 30  # every test anomaly's mask found
    out = tmp_path_factory.mktemp("danvae_report")
    # The packed table (path, label, defect, brightness) has no scores: evaluate_run computes them.
    result = evaluate_run(danvae_model, test.images, test.table, train_images=train.images,
                          train_brightness=train.table["brightness"], masks=masks, out_dir=out)
    return out, result


# ---- the whole run -----------------------------------------------------------------
def test_every_metric_key_present_and_in_range(danvae_run):
    out, result = danvae_run
    metrics = _strict_json(out / "metrics_full.json")
    assert metrics == result["metrics"]
    assert set(METRIC_KEYS) <= set(metrics)
    for key in ("auroc", "auprc", "f1", "precision", "recall", "fpr", "fpr_darkest", "auroc_darkest",
                "auroc_rest", "auprc_darkest", "pixel_auroc", "flagged_share"):
        assert metrics[key] is not None and 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    for key in ("auroc_by_brightness", "auprc_by_brightness"):
        assert len(metrics[key]) == 5
        assert all(v is None or 0.0 <= v <= 1.0 for v in metrics[key])
    assert -1.0 <= metrics["brightness_spearman_normal"] <= 1.0
    for key in ("r2_zy", "r2_zx"):
        assert metrics[key] is not None and metrics[key] <= 1.0
    for key in ("mi_zy_max", "mi_zy_mean", "mi_zx_max", "mi_zx_mean"):
        assert metrics[key] is not None and metrics[key] >= 0.0
    assert metrics["mi_zy_max"] >= metrics["mi_zy_mean"]
    assert {"kl_zx", "llr_zx", "elbo", "recon", "recon_max", "recon_norm_max", "ssim_max"} <= set(metrics["auroc_by_score"])
    assert metrics["n_images"] == 100 and metrics["n_anomalies"] == 30
    # dvc metrics show: numbers (or null) at the top level, lists or dicts of numbers below.
    for key, value in metrics.items():
        values = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
        assert all(v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in values), key


def test_metrics_json_holds_the_headline(danvae_run):
    out, result = danvae_run
    shown = _strict_json(out / "metrics.json")
    assert list(shown) == [k for k in HEADLINE_KEYS if k in result["metrics"]] and "auroc_darkest" in shown
    assert len(shown) < len(result["metrics"]) and shown == {k: result["metrics"][k] for k in shown}


def test_z_y_carries_brightness_for_the_trained_danvae(danvae_run):
    metrics = danvae_run[1]["metrics"]
    assert metrics["r2_zy"] > 0.8, metrics["r2_zy"]


def test_every_file_written_and_every_figure_in_the_report(danvae_run):
    out, result = danvae_run
    for name in FIGURES:
        png = out / "figures" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert str(png) in result["files"]
    for name in PLOTS:
        assert str(out / "plots" / f"{name}.json") in result["files"]
    assert all(Path(f).is_file() for f in result["files"])
    report = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"(figures/{name}.png)" in report, name
    for key in ("auroc", "fpr_darkest", "r2_zy", "r2_zx", "pixel_auroc", "brightness_spearman_normal"):
        assert f"| {key} |" in report


def test_plot_files_are_rows_with_x_and_y(danvae_run, surfaces):
    out, _ = danvae_run
    roc = _strict_json(out / "plots" / "roc.json")
    assert 2 <= len(roc) <= 200
    assert (roc[0]["fpr"], roc[0]["tpr"]) == (0.0, 0.0) and (roc[-1]["fpr"], roc[-1]["tpr"]) == (1.0, 1.0)
    assert all(0 <= r["fpr"] <= 1 and 0 <= r["tpr"] <= 1 for r in roc)
    assert np.all(np.diff([r["fpr"] for r in roc]) >= 0)
    pr = _strict_json(out / "plots" / "pr.json")
    assert 2 <= len(pr) <= 200 and all(0 <= r["recall"] <= 1 and 0 <= r["precision"] <= 1 for r in pr)
    bins = _strict_json(out / "plots" / "auroc_by_brightness.json")
    assert [r["bin"] for r in bins] == [0, 1, 2, 3, 4]
    assert set(bins[0]) == {"bin", "brightness_min", "brightness_max", "auroc", "auprc", "n", "n_anomalies"}
    assert sum(r["n"] for r in bins) == 100 and sum(r["n_anomalies"] for r in bins) == 30
    assert all(a["brightness_max"] <= b["brightness_min"] for a, b in zip(bins, bins[1:]))
    scatter = _strict_json(out / "plots" / "score_vs_brightness.json")
    assert len(scatter) == 70 and set(scatter[0]) == {"brightness", "score"}


# ---- the traversal ------------------------------------------------------------------
def test_traversal_brightens_monotonically(danvae_model, surfaces):
    train, test = surfaces
    normal = np.flatnonzero(test.table["label"] == "normal")
    order = normal[np.argsort(test.table["brightness"].to_numpy()[normal])]
    picks = order[np.linspace(0, len(order) - 1, 4).round().astype(int)]  # dark to bright inputs
    decoded = traversal_images(danvae_model, test.images[picks], steps=7, reference_images=train.images,
                               reference_brightness=train.table["brightness"])
    assert decoded.shape == (4, 7, SIZE, SIZE, 3) and decoded.dtype == np.uint8
    per_image = brightness(decoded.reshape(-1, SIZE, SIZE, 3)).reshape(4, 7)
    mean = per_image.mean(axis=0)
    assert np.all(np.diff(mean) > 0), mean
    assert mean[-1] - mean[0] > 0.02, mean
    assert np.all(per_image[:, -1] > per_image[:, 0]), per_image


def test_brightness_line_follows_the_latents():
    y = np.linspace(0.1, 0.9, 50)
    z = np.c_[2 * y + 1, -y, np.zeros_like(y)]
    line = brightness_line(z, y)
    np.testing.assert_allclose(line.at(np.array([0.5]))[0], [2.0, -0.5, 0.0], atol=1e-9)
    assert line.y_low < line.y_high


def test_a_scored_table_with_its_heatmaps_is_not_scored_again(danvae_model, danvae_run, surfaces, tmp_path):
    """The evaluate stage hands over the score stage's table and heatmaps: the metrics match the
    full pass, and the heatmaps given are the ones used (inverted, the pixel AUROC flips)."""
    _, test = surfaces
    masks = test.masks
    scored, maps = danvae_model.score_table(test.images, heatmaps=True)
    table = pd.concat([test.table.drop(columns="brightness"), scored], axis=1)
    same = evaluate_run(danvae_model, test.images, table, masks=masks, heatmaps=maps, out_dir=tmp_path / "same")
    full = danvae_run[1]["metrics"]
    for key in ("auroc", "auroc_darkest", "fpr", "pixel_auroc"):
        assert same["metrics"][key] == pytest.approx(full[key]), key
    flipped = evaluate_run(danvae_model, test.images, table, masks=masks, heatmaps=1.0 - maps,
                           out_dir=tmp_path / "flipped")
    assert flipped["metrics"]["pixel_auroc"] == pytest.approx(1.0 - full["pixel_auroc"])
    with pytest.raises(EvaluationError, match="heatmaps of shape"):
        evaluate_run(danvae_model, test.images, table, heatmaps=maps[:3], out_dir=tmp_path / "bad")


# ---- a baseline without z_y ---------------------------------------------------------
def test_vae_baseline_evaluates_without_z_y(surfaces, tmp_path):
    train, test = surfaces
    vae = _fit("vae", train, TrainConfig(epochs=6, warmup_epochs=2, batch_size=32, seed=0))
    scored = pd.concat([test.table, vae.score_table(test.images).drop(columns="brightness")], axis=1)
    result = evaluate_run(vae, test.images, scored, train_images=train.images, out_dir=tmp_path)
    m = result["metrics"]
    assert m["r2_zy"] is None and m["mi_zy_max"] is None and m["mi_zy_mean"] is None
    assert m["r2_zx"] is not None and m["r2_zx"] <= 1.0
    assert m["pixel_auroc"] is None and 0.0 <= m["auroc"] <= 1.0
    assert not (tmp_path / "figures" / "zy_traversal.png").exists()
    assert (tmp_path / "figures" / "roc.png").is_file()
    report = (tmp_path / "report.md").read_text()
    assert "no z_y traversal figure" in report and "zy_traversal.png" not in report
    with pytest.raises(NoNuisanceLatent):
        traversal_images(vae, test.images[:2])


# ---- pieces without a model ------------------------------------------------------------
def test_evaluate_scores_still_works_on_a_score_csv(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    label = np.where(np.arange(n) % 4 == 0, "anomaly", "normal")
    bright = rng.uniform(0.1, 0.9, n)
    score = rng.normal(size=n) + 2.0 * (label == "anomaly")
    table = pd.DataFrame({"path": [f"x{i}.png" for i in range(n)], "label": label, "brightness": bright,
                          "score": score, "is_anomaly": score >= 1.0})
    table.loc[0, "label"] = "unknown"  # ignored
    table.to_csv(tmp_path / "scores.csv", index=False)
    m = evaluate_scores(pd.read_csv(tmp_path / "scores.csv"))
    assert m["n_images"] == n - 1
    assert 0.5 < m["auroc"] <= 1.0 and 0.0 <= m["f1"] <= 1.0
    assert len(m["auroc_by_brightness"]) == 5 and len(m["auprc_by_brightness"]) == 5
    assert m["auroc_darkest"] == m["auroc_by_brightness"][0]
    known = table[table["label"] != "unknown"]
    normal = known[known["label"] == "normal"].sort_values("brightness")
    darkest = normal.head(len(normal) // 5)
    assert m["fpr_darkest"] == pytest.approx(darkest["is_anomaly"].mean())
    assert m["fpr"] == pytest.approx(normal["is_anomaly"].mean())
    # A threshold given explicitly overrides the table's decisions.
    assert evaluate_scores(known, threshold=1e9)["fpr"] == 0.0
    # No decisions at all: the threshold metrics are left out, the rest still works.
    bare = evaluate_scores(known.drop(columns="is_anomaly"))
    assert "f1" not in bare and "fpr_darkest" not in bare and bare["auroc"] == m["auroc"]
    with pytest.raises(EvaluationError, match="lacks column"):
        evaluate_scores(known.drop(columns="brightness"))


def test_bootstrap_aurocs_are_sklearns_on_each_paired_stratified_resample():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    labels = rng.random(150) < 0.25
    values = np.round(rng.normal(size=(150, 3)) + 0.8 * labels[:, None], 1)  # rounded: many ties
    got = bootstrap_aurocs(labels, values, n=230, seed=4)  # more than one chunk of resamples
    draw = np.random.default_rng(4)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    for row in got:
        idx = np.r_[draw.choice(pos, len(pos)), draw.choice(neg, len(neg))]
        assert row == pytest.approx([roc_auc_score(labels[idx], values[idx, j]) for j in range(3)], abs=1e-12)


def test_curves_are_downsampled_and_keep_their_ends():
    rng = np.random.default_rng(1)
    labels = rng.random(5000) < 0.3
    scores = rng.normal(size=5000) + labels
    roc = roc_points(labels, scores)
    assert len(roc) <= 200 and roc[-1]["fpr"] == 1.0 and roc[-1]["tpr"] == 1.0 and roc[0]["threshold"] is None
    pr = pr_points(labels, scores)
    assert len(pr) <= 200 and pr[0]["recall"] == 0.0 and pr[-1]["recall"] == 1.0
    assert roc_points(np.zeros(5, bool), np.arange(5.0)) == []


def test_pixel_auroc_on_resized_masks():
    big = np.zeros((3, 64, 64), np.uint8)
    big[0, 10:30, 10:30] = 255
    masks = resize_masks([big[0], None, big[2]], 32)
    assert masks.shape == (3, 32, 32) and masks[0, 5:15, 5:15].all() and not masks[1:].any()
    perfect = masks.astype(float) + 0.01 * np.random.default_rng(0).random(masks.shape)
    assert pixel_auroc(perfect, masks) == pytest.approx(1.0)
    assert pixel_auroc(np.zeros((3, 32, 32)), np.zeros((3, 32, 32), bool)) is None
    with pytest.raises(EvaluationError, match="shape"):
        pixel_auroc(np.zeros((3, 16, 16)), masks)


def test_held_out_r2_separates_informative_from_noise_latents():
    rng = np.random.default_rng(0)
    y_tr, y_te = rng.random(200), rng.random(100)
    informative = lambda y: np.c_[y, rng.normal(size=(len(y), 3))]  # noqa: E731
    assert held_out_r2(informative(y_tr), y_tr, informative(y_te), y_te) > 0.99
    noise_tr, noise_te = rng.normal(size=(200, 4)), rng.normal(size=(100, 4))
    assert held_out_r2(noise_tr, y_tr, noise_te, y_te) < 0.1
    # No train set: cross-validated on the test latents, still held out.
    assert held_out_r2(None, None, informative(y_te), y_te) > 0.99
