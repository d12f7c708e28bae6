"""The decision score and the score kind behind it: the brightness adjustment (danvae.scoring
and Detector.calibrate) and the choice of kind with its fallbacks (choose_score_kind), on small
hand-made inputs and an untrained 32 px model (no training)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from danvae.config import ScoreConfig
from danvae.detector import Detector
from danvae.models import build_model
from danvae.scoring import brightness_adjusted, choose_score_kind


# ----------------------------------------------------------------------------- brightness adjustment
def test_the_adjustment_subtracts_the_normal_trend():
    """Scores that are the trend plus a residual come out as the residual: a dark normal that
    scores high only for being dark drops below a bright anomaly."""
    trend = [10.0, -30.0, 25.0]  # high scores in the dark, as a VAE's error on dim images
    b = np.array([0.2, 0.5, 0.9, 0.9])
    residual = np.array([0.5, -0.5, 0.0, 3.0])
    adjusted = brightness_adjusted(np.polyval(trend, b) + residual, b, trend)
    np.testing.assert_allclose(adjusted, residual, atol=1e-9)
    raw = np.polyval(trend, b) + residual
    assert raw[0] > raw[3] and adjusted[0] < adjusted[3]
    np.testing.assert_array_equal(brightness_adjusted(raw, b, None), raw)


def _detector(n_normal: int, n_anomaly: int = 0, **score) -> tuple[Detector, np.ndarray, np.ndarray]:
    """An untrained 32 px danvae (fixed seed) and images spanning dark to bright."""
    torch.manual_seed(0)
    det = Detector("danvae", image_size=32, score=ScoreConfig(**score))
    det.model = build_model(det.model_config, 3, 32)
    rng = np.random.default_rng(0)
    n = n_normal + n_anomaly
    light = np.linspace(0.15, 1.0, n)[:, None, None, None]
    images = np.clip(rng.uniform(100, 255, (n, 32, 32, 3)) * light, 0, 255).astype(np.uint8)
    labels = np.r_[np.zeros(n_normal, bool), np.ones(n_anomaly, bool)]
    order = rng.permutation(n)
    return det, images[order], labels[order]


def test_calibration_fits_the_trend_and_the_decision_score_is_centred_on_normals():
    """brightness_adjust on, enough normals: a trend is fitted, and the calibration normals'
    decision scores have their median at 0 (the normal median trend removed; fitted on them alone,
    without relit copies)."""
    det, images, labels = _detector(n_normal=24, trend_relit_copies=0)
    det.calibrate(images, labels)
    assert det.brightness_trend is not None
    table = det.score_table(images)
    raw = table[det.score_kind].to_numpy()
    assert abs(float(np.median(table["score"]))) < 0.05 * float(np.std(raw) + np.abs(np.median(raw)))
    assert not np.allclose(table["score"], raw)


def test_the_off_switch_leaves_the_raw_score():
    """brightness_adjust: false: no trend, the decision score is the chosen kind unchanged, and
    the threshold is calibrated on it."""
    det, images, labels = _detector(n_normal=24, brightness_adjust=False)
    det.calibrate(images, labels)
    assert det.brightness_trend is None and det.brightness_spread is None
    table = det.score_table(images)
    np.testing.assert_array_equal(table["score"].to_numpy(), table[det.score_kind].to_numpy())
    assert ((table["score"] >= det.threshold) == table["is_anomaly"]).all()


@pytest.mark.parametrize(("n_normal", "adjusted"), [(9, False), (10, True)])
def test_fewer_than_ten_normals_give_no_adjustment(n_normal: int, adjusted: bool):
    """Nine validation normals (plus anomalies) are too few to fit a trend; ten are enough."""
    det, images, labels = _detector(n_normal=n_normal, n_anomaly=6)
    det.calibrate(images, labels)
    assert (det.brightness_trend is not None) is adjusted
    if not adjusted:
        table = det.score_table(images)
        np.testing.assert_array_equal(table["score"].to_numpy(), table[det.score_kind].to_numpy())


def test_a_configured_kind_is_kept_and_said_so():
    """score.kind other than auto is used as given, and kind_choice says it came from the configuration."""
    det, images, labels = _detector(n_normal=12, kind="recon")
    det.calibrate(images, labels)
    assert det.score_kind == "recon" and det.kind_choice == "score.kind in the configuration"


# ----------------------------------------------------------------------------- score-kind choice
def _scores(labels: np.ndarray, separations: dict[str, float], seed: int = 0) -> pd.DataFrame:
    """One column per kind: unit normal noise, shifted by ``separation`` on anomalies."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({k: rng.normal(size=len(labels)) + s * labels for k, s in separations.items()})


def _labels(n_normal: int, n_anomaly: int) -> np.ndarray:
    return np.r_[np.zeros(n_normal, bool), np.ones(n_anomaly, bool)]


def test_a_non_finite_default_falls_back_to_the_best_finite_kind():
    """A default kind with NaN scores (head_max of a global model) is left out; the kind with the
    best validation AUROC stands in, even with too few anomalies to choose by."""
    labels = _labels(60, 8)
    table = _scores(labels, {"elbo": 0.3, "kl_zx": 2.0, "recon": 1.0}).assign(head_max=np.nan)
    choice = choose_score_kind(table, labels, "head_max", min_anomalies=30)
    assert choice.kind == "kl_zx" and "head_max" not in choice.aurocs
    assert set(choice.aurocs) == {"elbo", "kl_zx", "recon"}


@pytest.mark.parametrize(("n_anomaly", "kind"), [(29, "head_max"), (30, "recon_norm_max")])
def test_min_val_anomalies_is_the_least_that_may_move_the_choice(n_anomaly: int, kind: str):
    """With min_anomalies=30, 29 validation anomalies keep the default; 30 let a clear winner in."""
    labels = _labels(150, n_anomaly)
    table = _scores(labels, {"head_max": 0.2, "recon_norm_max": 3.0})
    assert choose_score_kind(table, labels, "head_max", min_anomalies=30).kind == kind


def test_choice_confidence_sets_how_sure_the_bootstrap_must_be():
    """A kind that beats the default in most but not nearly all resamples is chosen at a lax
    confidence and not at a strict one."""
    labels = _labels(120, 40)
    table = _scores(labels, {"head_max": 0.6, "recon_norm_max": 1.0}, seed=2)  # wins ~88 % of resamples
    lax = choose_score_kind(table, labels, "head_max", min_anomalies=30, confidence=0.7)
    strict = choose_score_kind(table, labels, "head_max", min_anomalies=30, confidence=0.95)
    assert lax.kind == "recon_norm_max" and lax.how.startswith("validation: beats head_max")
    assert strict.kind == "head_max" and strict.how == "default"


def test_of_several_clear_winners_the_best_is_chosen_and_other_columns_are_not_kinds():
    """Two kinds beat the default; the higher-AUROC one wins though it comes later. Columns that
    are not score kinds (brightness, here a perfect separator) are never chosen."""
    labels = _labels(150, 40)
    table = _scores(labels, {"head_max": 0.0, "recon": 2.0, "selfsim_max": 4.0})
    table.insert(0, "brightness", labels.astype(float))
    choice = choose_score_kind(table, labels, "head_max", min_anomalies=30)
    assert choice.kind == "selfsim_max" and "brightness" not in choice.aurocs


# ----------------------------------------------------------------------------- relit copies for the trend
def test_relit_copies_are_seeded_relit_versions_of_each_normal():
    from danvae.config import LightingConfig
    from danvae.holdout import relit_copies

    _, images, _ = _detector(n_normal=16)
    copies = relit_copies(images, LightingConfig(), seed=3, copies=2)
    assert copies.shape == (32, *images.shape[1:]) and copies.dtype == np.uint8
    np.testing.assert_array_equal(copies, relit_copies(images, LightingConfig(), seed=3, copies=2))
    assert not np.array_equal(copies, relit_copies(images, LightingConfig(), seed=4, copies=2))
    ratio = copies.reshape(2, 16, -1).mean(axis=2) / images.reshape(16, -1).mean(axis=1)
    assert ratio.min() < 0.7 and ratio.max() > 1.0, "gains both below and above 1 (0.35–1.3)"
    assert relit_copies(images, LightingConfig(), seed=3, copies=0).shape == (0, *images.shape[1:])


@pytest.mark.parametrize("copies", [0, 2])
def test_the_trend_is_fitted_on_the_validation_normals_and_their_relit_copies(monkeypatch, copies: int):
    """A validation split of bright normals only: with relit copies the trend also sees darker
    images (the dark end is no longer an extrapolation); with none, only the normals."""
    import danvae.detector as detector_module

    det, images, labels = _detector(n_normal=48, n_anomaly=4, trend_relit_copies=copies)
    bright = images.reshape(len(images), -1).mean(axis=1) > np.median(images)
    images, labels = images[bright], labels[bright]
    seen: list[np.ndarray] = []
    fit = detector_module.fit_brightness_trend
    monkeypatch.setattr(detector_module, "fit_brightness_trend",
                        lambda scores, level, *a: seen.append(np.asarray(level)) or fit(scores, level, *a))
    det.calibrate(images, labels)
    normals = int((~labels).sum())
    assert len(seen[0]) == normals * (1 + copies)
    own = det._scaled(det.score_table(images[~labels])["brightness"].to_numpy())
    if copies:
        assert seen[0].min() < own.min() - 0.05
    else:
        np.testing.assert_allclose(np.sort(seen[0]), np.sort(own))
