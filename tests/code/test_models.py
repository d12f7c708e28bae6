import math

import numpy as np
import pytest
import torch

from danvae.config import ModelConfig, TrainConfig
from danvae.models import MODEL_SCORE_KINDS, Batch, LossWeights, build_model
from danvae.train import Trainer, TrainingData, loss_weights, warmup_factor


MODELS = ["danvae", "vae", "dpvae", "danvae-global", "vae-global", "dpvae-global"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_for_sizes_and_channels(name, size, channels):
    model = build_model(ModelConfig(name=name, zx_dim=6, zy_dim=2), channels, size)
    x = torch.rand(2, channels, size, size)
    assert model.reconstruct(x).shape == x.shape
    scores, maps = model.scores(x, torch.rand(2))
    assert set(scores) == set(MODEL_SCORE_KINDS)
    assert all(v.shape == (2,) for v in scores.values())
    assert all(m.shape == (2, size, size) for m in maps.values())
    spatial = not name.endswith("-global")
    assert ("head_max" in maps) == spatial and ("kl_zx_max" in maps) == spatial
    assert torch.isfinite(scores["head_max"]).all() == spatial
    mask = torch.zeros(2, size, size, dtype=torch.bool)
    mask[1, :4, :4] = True
    batch = Batch(x, torch.rand(2), torch.tensor([True, False]), torch.tensor([False, True]), mask=mask,
                  has_mask=torch.tensor([True, True]))
    terms = model.loss(batch, LossWeights())
    assert terms["total"].ndim == 0 and torch.isfinite(terms["total"])


@pytest.mark.parametrize("name", ["danvae", "vae", "danvae-global"])
def test_256_px_is_supported_and_odd_sizes_are_refused(name):
    model = build_model(ModelConfig(name=name, zx_dim=4, zy_dim=2), 1, 256)
    assert model.reconstruct(torch.rand(1, 1, 256, 256)).shape == (1, 1, 256, 256)
    with pytest.raises(ValueError, match="power of two"):
        build_model(ModelConfig(), 3, 100)


def test_beta_warmup_is_linear_then_flat():
    cfg = TrainConfig(epochs=10, warmup_epochs=4, beta_x=1.0, beta_y=3.0)
    got = [loss_weights(cfg, e, 3, 32) for e in range(6)]
    assert [w.beta_x for w in got] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [w.beta_y for w in got] == [0.0, 0.75, 1.5, 2.25, 3.0, 3.0]
    assert warmup_factor(0, 0) == 1.0


def test_default_alpha_scales_reference_with_pixel_count():
    cfg = TrainConfig()
    assert loss_weights(cfg, 0, 3, 128).alpha == pytest.approx(3500.0)
    assert loss_weights(cfg, 0, 3, 64).alpha == pytest.approx(875.0)
    assert loss_weights(TrainConfig(alpha=7.0), 0, 3, 64).alpha == 7.0


def test_dual_prior_pulls_only_labelled_anomalies():
    torch.manual_seed(0)
    model = build_model(ModelConfig(zx_dim=4, zy_dim=2), 1, 32)
    x = torch.rand(2, 1, 32, 32)
    normal = model.loss(Batch(x, torch.rand(2), torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)),
                        LossWeights(beta_x=1, beta_y=0, alpha=0))
    torch.manual_seed(0)
    anomal = model.loss(Batch(x, torch.rand(2), torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)),
                        LossWeights(beta_x=1, beta_y=0, alpha=0))
    # An untrained encoder sits near 0, far from the anomaly prior at m = 10.
    assert anomal["kl_x"] > normal["kl_x"] + 100


def _tiny_data(n_normal=24, n_anomaly=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = (torch.rand(n_normal + n_anomaly, size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    anomaly = [False] * n_normal + [True] * n_anomaly
    return TrainingData.from_arrays(imgs, imgs.max(-1).mean((1, 2)) / 255.0, anomaly, sup_ratio=0.5, seed=seed)


def test_decoder_is_frozen_on_anomaly_batches():
    data = _tiny_data()
    model = build_model(ModelConfig(zx_dim=4, zy_dim=2), 3, 32)
    trainer = Trainer(model, TrainConfig(epochs=1, warmup_epochs=0, batch_size=8), progress=False)
    # Count decoder vs encoder changes across only the anomaly batches of one epoch.
    before_dec = [p.detach().clone() for p in model.decoder.parameters()]
    before_enc = [p.detach().clone() for p in model.encoder_x.parameters()]
    normals = data.anomaly.clone()
    only_anomalies = TrainingData(data.images[normals], data.y[normals], data.y_known[normals], data.anomaly[normals])
    # The epoch's normal pass is empty, so only anomaly batches run.
    only_anomalies.anomaly = torch.ones(len(only_anomalies), dtype=torch.bool)
    trainer.run_epoch(only_anomalies, epoch=0)
    assert all(torch.equal(a, b) for a, b in zip(before_dec, model.decoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_enc, model.encoder_x.parameters()))
    assert all(p.requires_grad for p in model.decoder.parameters())


def test_warmup_epochs_see_no_anomalies():
    data = _tiny_data()
    model = build_model(ModelConfig(zx_dim=4, zy_dim=2), 3, 32)
    trainer = Trainer(model, TrainConfig(epochs=2, warmup_epochs=1, batch_size=64), progress=False)
    seen = []
    original = trainer._step

    def spy(batch, weights, epoch):
        seen.append((epoch, bool(batch.anomaly.any())))
        return original(batch, weights, epoch)

    trainer._step = spy
    trainer.fit(data, resume=False)
    assert (0, True) not in seen
    assert (1, True) in seen


def test_vae_baseline_never_trains_on_anomalies():
    data = _tiny_data()
    model = build_model(ModelConfig(name="vae", zx_dim=4, zy_dim=2), 3, 32)
    trainer = Trainer(model, TrainConfig(epochs=2, warmup_epochs=0, batch_size=64), progress=False)
    seen = []
    original = trainer._step
    trainer._step = lambda b, w, e: seen.append(bool(b.anomaly.any())) or original(b, w, e)
    trainer.fit(data, resume=False)
    assert seen and not any(seen)


def _f1_at(threshold: float, scores: np.ndarray, labels: np.ndarray) -> float:
    flagged = scores >= threshold
    tp = int((flagged & labels).sum())
    return 2 * tp / (int(flagged.sum()) + int(labels.sum()))


def test_threshold_is_best_f1_within_the_false_alarm_cap():
    """The threshold has the highest F1 of every score that flags at most max_fpr of the normals
    (found here by trying them all): 0.95, where 3 of 5 anomalies and 5 normals are flagged."""
    from danvae.scoring import calibrate_threshold

    normal = np.linspace(0, 1, 100)
    anomalies = np.array([0.95, 0.97, 0.99, 0.5, 0.2])
    scores = np.concatenate([normal, anomalies])
    labels = np.r_[np.zeros(100, bool), np.ones(5, bool)]
    threshold, how = calibrate_threshold(scores, labels, max_fpr=0.1)
    assert how.startswith("best_f1")
    assert (normal >= threshold).mean() <= 0.1
    allowed = [t for t in np.unique(scores) if (normal >= t).mean() <= 0.1]
    f1 = {float(t): _f1_at(t, scores, labels) for t in allowed}
    assert _f1_at(threshold, scores, labels) == pytest.approx(max(f1.values()))
    assert threshold == pytest.approx(0.95)


def test_threshold_never_flags_everything_for_a_useless_score():
    from danvae.scoring import calibrate_threshold

    rng = np.random.default_rng(0)
    scores = rng.random(200)
    labels = rng.random(200) < 0.3
    threshold, _ = calibrate_threshold(scores, labels, max_fpr=0.1)
    assert (scores[~labels] >= threshold).mean() <= 0.1


def test_threshold_without_anomalies_is_a_high_normal_quantile():
    from danvae.scoring import calibrate_threshold

    scores = np.arange(100.0)
    threshold, how = calibrate_threshold(scores, np.zeros(100, bool), normal_quantile=0.95)
    assert how == "normal_q0.95"
    assert 0 < (scores >= threshold).mean() <= 0.05


def test_calibrated_likelihood_weighs_errors_by_the_batch_variance():
    from danvae.models.likelihood import GaussianLikelihood

    x = torch.zeros(4, 1, 8, 8)
    x_hat = torch.full_like(x, 0.1)  # MSE 0.01 everywhere
    sse_loss, w = GaussianLikelihood("sse")(x, x_hat)
    assert w == 1.0 and torch.allclose(sse_loss, torch.full((4,), 0.64))
    lik = GaussianLikelihood("calibrated").train()
    nll, w = lik(x, x_hat)
    assert float(w) == pytest.approx(50.0)
    assert torch.allclose(nll, 0.64 * 50.0 + 32 * torch.log(torch.tensor(0.01)))
    assert float(lik.variance) < 0.5  # the running variance moves toward the batch's


def test_relative_likelihood_weighs_a_dark_image_as_a_bright_one():
    from danvae.models.likelihood import GaussianLikelihood

    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8) * 0.5 + 0.4
    x_hat = x * (1 + 0.1 * torch.randn_like(x))  # the same relative error ...
    pair = (torch.cat([x, 0.3 * x]), torch.cat([x_hat, 0.3 * x_hat]))  # ... on a bright and a dark copy
    relative = GaussianLikelihood("relative").error(*pair)
    assert float(relative[1] / relative[0]) == pytest.approx(1.0, abs=0.15)  # up to the small brightness floor
    absolute = GaussianLikelihood("calibrated").error(*pair)
    assert float(absolute[1] / absolute[0]) == pytest.approx(0.09, rel=1e-4)  # a (brightness)² share


@pytest.mark.parametrize("likelihood", ["sse", "calibrated", "relative"])
def test_the_likelihoods_train_without_error(likelihood):
    data = _tiny_data()
    model = build_model(ModelConfig(zx_dim=4, zy_dim=2, likelihood=likelihood), 3, 32)
    history = Trainer(model, TrainConfig(epochs=2, warmup_epochs=1, batch_size=16), progress=False).fit(data)
    assert all(math.isfinite(h["total"]) for h in history)


def test_brightness_trend_removes_a_lighting_bias_but_keeps_anomalies():
    from scipy.stats import spearmanr

    from danvae.scoring import fit_brightness_trend

    rng = np.random.default_rng(0)
    y = rng.uniform(0.2, 1.0, 400)
    normal_scores = 50 - 40 * y + rng.normal(0, 1, 400)  # dark normals score high: the failure mode
    trend = fit_brightness_trend(normal_scores, y)
    adjusted = normal_scores - np.polyval(trend, y)
    assert abs(spearmanr(y, normal_scores).statistic) > 0.9
    assert abs(spearmanr(y, adjusted).statistic) < 0.1
    anomaly = 50 - 40 * 0.9 + 8  # a bright anomaly: lower raw score than a dark normal, higher adjusted one
    assert anomaly < np.max(normal_scores)
    assert anomaly - np.polyval(trend, 0.9) > np.quantile(adjusted, 0.99)


def test_brightness_spread_evens_out_false_alarms_on_dark_images():
    from danvae.scoring import brightness_adjusted, fit_brightness_spread, fit_brightness_trend

    rng = np.random.default_rng(1)
    y = rng.uniform(0.2, 1.0, 2000)
    noise = np.where(y < 0.4, 3.0, 1.0)  # dark images: three times the spread, same median
    scores = 10 + rng.normal(0, 1, 2000) * noise
    trend = fit_brightness_trend(scores, y)
    plain = brightness_adjusted(scores, y, trend)
    evened = brightness_adjusted(scores, y, trend, fit_brightness_spread(plain, y))
    dark = y < 0.3

    def dark_fpr(s):
        return float((s[dark] > np.quantile(s, 0.95)).mean())

    assert dark_fpr(plain) > 0.15  # the median trend alone leaves dark images over-flagged
    assert dark_fpr(evened) < dark_fpr(plain) / 2
