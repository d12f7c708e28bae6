"""Behaviour of trained models on generated surfaces (short CPU training, easy defects)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score, roc_auc_score

from danvae import Detector
from danvae.config import ModelConfig, TrainConfig
from danvae.data.folders import discover, pack
from danvae.data.synthetic import generate_surfaces

SIZE = 32
TRAIN = TrainConfig(epochs=24, warmup_epochs=6, batch_size=32, anomaly_repeats=2, seed=0)


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory):
    root = tmp_path_factory.mktemp("behaviour")
    kw = dict(size=SIZE, dark_share=0.25, difficulty="easy", materials=["brushed_metal"])
    generate_surfaces(root / "train", n_normal=300, n_anomaly=40, seed=1, **kw)
    generate_surfaces(root / "test", n_normal=150, n_anomaly=60, seed=2, **kw)
    return pack(discover(root / "train"), SIZE), pack(discover(root / "test"), SIZE)


def _fit(name, train):
    labels = (train.table["label"] == "anomaly").to_numpy()
    return Detector(ModelConfig(name=name, zx_dim=8, zy_dim=4), image_size=SIZE, train=TRAIN).fit(
        train.images, labels, progress=False)


@pytest.fixture(scope="module")
def danvae_model(surfaces):
    return _fit("danvae", surfaces[0])


def test_z_y_predicts_brightness_on_held_out_images(danvae_model, surfaces):
    train, test = surfaces
    z_train, z_test = danvae_model.latents(train.images), danvae_model.latents(test.images)
    reg = LinearRegression().fit(z_train["z_y"], train.table["brightness"])
    r2 = r2_score(test.table["brightness"], reg.predict(z_test["z_y"]))
    assert r2 > 0.8, f"R²(z_y → brightness) = {r2:.3f}"


def test_danvae_detects_generated_defects(danvae_model, surfaces):
    test = surfaces[1]
    labels = (test.table["label"] == "anomaly").to_numpy()
    auroc = roc_auc_score(labels, danvae_model.score_samples(test.images))
    assert auroc > 0.9, f"AUROC {auroc:.3f} with score {danvae_model.score_kind}"


def test_threshold_flags_anomalies_not_everything(danvae_model, surfaces):
    test = surfaces[1]
    labels = (test.table["label"] == "anomaly").to_numpy()
    flagged = danvae_model.predict(test.images)
    assert flagged[labels].mean() > 0.5
    assert flagged[~labels].mean() < 0.3


def test_danvae_decision_score_barely_moves_with_lighting(danvae_model, surfaces):
    """Among normal images, the score DAn-VAE decides by does not rise or fall with brightness
    (the plain squared-error score of the same model does)."""
    test = surfaces[1]
    normal = (test.table["label"] == "normal").to_numpy()
    y = test.table["brightness"][normal]
    table = danvae_model.score_table(test.images[normal])
    assert abs(spearmanr(y, table["score"]).statistic) < 0.25
    assert abs(spearmanr(y, table["score"]).statistic) < abs(spearmanr(y, table["recon"]).statistic)


def test_saved_detector_scores_identically(danvae_model, surfaces, tmp_path):
    test = surfaces[1]
    danvae_model.save(tmp_path)
    again = Detector.load(tmp_path)
    np.testing.assert_allclose(again.score_samples(test.images[:20]), danvae_model.score_samples(test.images[:20]),
                               rtol=1e-5)
    assert again.threshold == danvae_model.threshold and again.score_kind == danvae_model.score_kind


# kl_zx_max is left out: the z_x KL map rose for only 60 % of planted defects (recorded in the
# README as an open gap), while every image-space map and the head rise for nearly all.
LOCAL_KINDS = ("recon_max", "recon_norm_max", "ssim_max", "selfsim_max", "head_max")


def _plant(images, top=10, left=14, side=5, factor=0.45):
    out = images.copy()
    out[:, top:top + side, left:left + side] = (out[:, top:top + side, left:left + side] * factor).astype(np.uint8)
    return out


def test_a_planted_defect_raises_every_local_score_and_the_heatmap_points_at_it(danvae_model, surfaces):
    test = surfaces[1]
    clean = test.images[(test.table["label"] == "normal").to_numpy()][:40]
    planted = _plant(clean)
    before, after = danvae_model.score_table(clean), danvae_model.score_table(planted)
    raised = {kind: float((after[kind] > before[kind]).mean()) for kind in LOCAL_KINDS}
    assert all(share > 0.8 for share in raised.values()), raised
    maps = danvae_model.heatmaps(planted)
    peaks = np.array([np.unravel_index(np.argmax(m), m.shape) for m in maps])
    inside = (peaks[:, 0] >= 8) & (peaks[:, 0] < 17) & (peaks[:, 1] >= 12) & (peaks[:, 1] < 21)  # 2 px margin
    assert inside.mean() > 0.8, f"heatmap peak inside the defect for {inside.mean():.0%} of images"


def test_a_normal_image_keeps_its_decision_under_a_change_of_gain(danvae_model, surfaces):
    test = surfaces[1]
    normal = test.images[(test.table["label"] == "normal").to_numpy()]
    normal = normal[(normal.astype(float) * 1.2 <= 255).mean(axis=(1, 2, 3)) > 0.99]  # no clipping at 1.2
    base = danvae_model.predict(normal)
    for gain in (0.4, 1.2):
        relit = np.clip(np.rint(normal.astype(float) * gain), 0, 255).astype(np.uint8)
        kept = (danvae_model.predict(relit) == base).mean()
        assert kept >= 0.9, f"gain {gain}: {kept:.0%} of normal images keep their decision"


def test_predict_writes_overlays_whose_hottest_pixel_lies_in_the_planted_defect(danvae_model, surfaces, tmp_path):
    """``danvae predict --all``: a row per image whose normalised score is ≥ 0.5 exactly when it is
    flagged, and an overlay per image whose heatmap panel is lightest inside the planted defect."""
    import pandas as pd
    from PIL import Image

    from danvae.cli import main

    test = surfaces[1]
    clean = test.images[(test.table["label"] == "normal").to_numpy()][:30]
    folder = tmp_path / "data"
    for sub, images in (("anomaly/planted", _plant(clean)), ("normal", clean)):
        (folder / sub).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / sub / f"{i:03d}.png")
    danvae_model.save(tmp_path / "model")
    assert main(["predict", "--model", str(tmp_path / "model"), "--data", str(folder), "--out", str(tmp_path / "out"),
                 "--all", "--quiet"]) == 0
    rows = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert len(rows) == 60 and rows["overlay"].notna().all()
    assert ((rows["normalized_score"] >= 0.5) == rows["is_anomaly"]).all()
    assert rows["normalized_score"].between(0, 1).all()
    planted = rows[rows["label"] == "anomaly"]
    assert planted["normalized_score"].mean() > rows.loc[rows["label"] == "normal", "normalized_score"].mean()
    inside = []
    for name in planted["overlay"]:
        tile = np.asarray(Image.open(tmp_path / "out" / "overlays" / name).convert("L"), dtype=float)
        side = tile.shape[0]
        heat = tile[:, side:2 * side]  # the middle panel: the heatmap alone, lighter = hotter
        r, c = np.unravel_index(np.argmax(heat), heat.shape)
        r, c = r * SIZE / side, c * SIZE / side
        inside.append(8 <= r < 17 and 12 <= c < 21)  # the defect at rows 10-14, columns 14-18, 2 px margin
    assert np.mean(inside) > 0.8, f"overlay peak inside the defect for {np.mean(inside):.0%} of images"
    assert (tmp_path / "out" / "contact_sheet.png").exists()
    assert (tmp_path / "out" / "index.html").read_text().count("<img ") == 60
