"""The spatial DAn-VAE's own rules: the per-location dual prior, the brightness-blind z_x
encoder, the anomaly head's loss, and the score-kind choice."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from danvae.config import ModelConfig, TrainConfig
from danvae.models import Batch, LossWeights, build_model
from danvae.models.spatial import dual_prior_means, kl_map
from danvae.scoring import choose_score_kind, fit_fusion, fuse

SIZE = 32


def _batch(n=2, mask=None, has_mask=None, anomaly=(False, True)):
    torch.manual_seed(0)
    x = torch.rand(n, 3, SIZE, SIZE)
    return Batch(x, torch.rand(n), torch.ones(n, dtype=torch.bool), torch.tensor(anomaly), mask=mask,
                 has_mask=has_mask)


def _head_case(columns: slice):
    """A model, a batch whose second image has a 4-row defect mask over ``columns``, and its reconstruction."""
    model = build_model(ModelConfig(zx_dim=4, zy_dim=2), 3, SIZE)
    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    mask[1, 8:12, columns] = True
    batch = _batch(mask=mask, has_mask=torch.tensor([True, True]))
    return model, batch, model.reconstruct(batch.x)


def test_dual_prior_acts_only_inside_the_mask():
    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    mask[1, 0:4, 4:8] = True  # exactly latent cell (0, 1) at stride 4
    mask[0, 10:20, 10:20] = True  # a normal image's mask is ignored
    batch = _batch(mask=mask, has_mask=torch.tensor([True, True]))
    prior = dual_prior_means(batch, torch.zeros(2, 8, 8), anomaly_mean=10.0, top_k=0.05)
    assert prior.shape == (2, 1, 8, 8)
    assert prior[0].sum() == 0
    assert prior[1, 0, 0, 1] == 10.0 and prior[1].sum() == 10.0


def test_dual_prior_without_a_mask_pulls_the_top_k_locations():
    batch = _batch(mask=torch.zeros(2, SIZE, SIZE, dtype=torch.bool), has_mask=torch.tensor([True, False]))
    kl = torch.zeros(2, 8, 8)
    kl[1, 3, 3], kl[1, 5, 6], kl[1, 0, 0] = 9.0, 8.0, 7.0
    prior = dual_prior_means(batch, kl, anomaly_mean=10.0, top_k=3 / 64)
    assert prior[0].sum() == 0
    chosen = {tuple(i) for i in torch.nonzero(prior[1, 0]).tolist()}
    assert chosen == {(3, 3), (5, 6), (0, 0)}


def test_the_anomaly_kl_rises_only_where_the_prior_moved():
    model = build_model(ModelConfig(zx_dim=4, zy_dim=2), 3, SIZE)
    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    mask[1, :8, :8] = True
    with_mask = model.loss(_batch(mask=mask, has_mask=torch.tensor([True, True])), LossWeights(alpha=0))
    torch.manual_seed(0)
    normal = model.loss(_batch(mask=mask, has_mask=torch.tensor([True, True]), anomaly=(False, False)),
                        LossWeights(alpha=0))
    # 4 of 64 cells pulled to m = 10 in 4 channels: about 4·4·50 = 800 nats more on one of two images.
    assert 300 < float((with_mask["kl_x"] - normal["kl_x"]).detach()) < 500


def test_z_x_does_not_see_a_change_of_gain():
    model = build_model(ModelConfig(zx_dim=4, zy_dim=2), 3, SIZE).eval()
    x = torch.rand(2, 3, SIZE, SIZE) * 0.8
    mu, _ = model.anomaly_latent(x)
    mu_dark, _ = model.anomaly_latent(x * 0.4)
    assert torch.allclose(mu, mu_dark, atol=1e-3)
    mu_y, mu_y_dark = model.latent_means(x)["z_y"], model.latent_means(x * 0.4)["z_y"]
    assert not torch.allclose(mu_y, mu_y_dark, atol=1e-3)  # the nuisance latent does


def test_head_loss_is_lower_when_the_head_points_at_the_mask():
    model, batch, x_hat = _head_case(slice(8, 12))
    mask = batch.mask
    from danvae.models import anomaly_head

    right = anomaly_head.focal_loss(torch.where(mask, 5.0, -5.0), mask.float())
    wrong = anomaly_head.focal_loss(torch.where(mask, -5.0, 5.0), mask.float())
    assert (right < wrong).all()
    assert model.head_loss(batch, x_hat) > 0
    # The head's input is detached: its loss leaves the VAE's gradients untouched.
    model.zero_grad()
    model.head_loss(batch, model.reconstruct(batch.x)).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.decoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.head.parameters())


def _table(n_normal, n_anomaly, separation, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_normal, bool), np.ones(n_anomaly, bool)]
    strong = rng.normal(size=len(labels)) + separation * labels
    weak = rng.normal(size=len(labels)) + 0.2 * labels
    return pd.DataFrame({"head_max": weak, "recon_norm_max": strong, "kl_zx": rng.normal(size=len(labels))}), labels


def test_score_kind_stays_the_default_with_few_validation_anomalies():
    table, labels = _table(100, 12, separation=3.0)
    choice = choose_score_kind(table, labels, "head_max", min_anomalies=30)
    assert choice.kind == "head_max" and "12 validation anomalies" in choice.how
    lo, hi = choice.interval
    assert lo <= choice.aurocs["head_max"] <= hi


def test_score_kind_moves_only_when_another_clearly_wins():
    table, labels = _table(200, 60, separation=3.0)
    assert choose_score_kind(table, labels, "head_max", min_anomalies=30).kind == "recon_norm_max"
    close, labels = _table(200, 60, separation=0.25)
    assert choose_score_kind(close, labels, "head_max", min_anomalies=30).kind == "head_max"
    none = choose_score_kind(table, np.zeros(len(table), bool), "head_max")
    assert none.kind == "head_max" and none.interval is None


def test_fused_score_standardises_on_normals():
    table = pd.DataFrame({"head_max": [0.1, 0.2, 0.3, 0.9], "recon_norm_max": [10.0, 20.0, 30.0, 90.0],
                          "kl_zx_max": [1.0, 1.0, 1.0, 1.0]})
    stats = fit_fusion(table.iloc[:3])
    fused = fuse(table, stats)
    assert fused.shape == (4,) and fused[3] > fused[:3].max()
    assert np.isnan(fuse(table, None)).all()


def test_kl_map_is_zero_at_the_prior():
    mu, logvar = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    assert kl_map(mu, logvar).abs().max() == 0
    assert torch.allclose(kl_map(mu + 10, logvar, 10.0), torch.zeros(1, 8, 8))


def test_the_head_map_is_averaged_over_mirror_images():
    model = build_model(ModelConfig(zx_dim=4, zy_dim=2), 3, SIZE).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        x_hat = model.reconstruct(x)
        p = model._head_probability(x, x_hat)
        mirrored = model._head_probability(x.flip(-1), x_hat.flip(-1))
        model.head_tta = False
        single = model._head_probability(x, x_hat)
    assert torch.allclose(p, mirrored.flip(-1), atol=1e-5)
    assert not torch.allclose(p, single, atol=1e-6)


@pytest.mark.parametrize("name", ["danvae", "vae"])
def test_several_heads_start_apart_train_each_and_average_their_maps(name):
    torch.manual_seed(0)
    one = build_model(ModelConfig(name=name, zx_dim=4, zy_dim=2), 3, SIZE)
    torch.manual_seed(0)
    two = build_model(ModelConfig(name=name, zx_dim=4, zy_dim=2, heads=2), 3, SIZE)
    added = set(two.state_dict()) - set(one.state_dict())
    assert added == {k for k in two.state_dict() if k.startswith("extra_heads.0.")}
    # the VAE and the first head start from the same weights whatever the number of heads
    assert all(torch.equal(v, two.state_dict()[k]) for k, v in one.state_dict().items())
    assert not torch.equal(two.head.enc1[0].weight, two.extra_heads[0].enc1[0].weight)
    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    mask[1, 8:12, 8:12] = True
    batch = _batch(mask=mask, has_mask=torch.tensor([True, True]))
    two.head_loss(batch, two.reconstruct(batch.x)).backward()
    for weight in (two.head.out.weight, two.extra_heads[0].out.weight):
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    two.eval().head_tta = False
    with torch.no_grad():
        x_hat = two.reconstruct(batch.x)
        logits = two._head_logits(batch.x, x_hat)
        assert len(logits) == 2
        expected = (torch.sigmoid(logits[0]) + torch.sigmoid(logits[1])) / 2
        assert torch.allclose(two._head_probability(batch.x, x_hat), expected, atol=1e-6)


def _stripes(size: int, channels: int, seed: int = 0) -> torch.Tensor:
    """A periodic surface with mild noise: every patch has twins elsewhere in the image."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.arange(size, dtype=torch.float32)
    base = 0.5 + 0.2 * torch.sin(cols * 2 * torch.pi / 8)
    img = base.expand(size, size).clone() + 0.02 * torch.randn(size, size, generator=g)
    return img.clamp(0, 1).expand(channels, size, size)[None].clone()


@pytest.mark.parametrize("size, channels", [(32, 1), (64, 3), (256, 3)])
def test_self_dissimilarity_peaks_on_a_planted_flaw_and_ignores_gain(size, channels):
    from danvae.models.self_similarity import self_dissimilarity_map

    x = _stripes(size, channels)
    top, left = size // 2, size // 3
    x[..., top:top + 4, left:left + 4] = 0.05  # a dark pit that appears nowhere else
    m = self_dissimilarity_map(x)
    assert m.shape == (1, size, size)
    peak = divmod(int(m[0].argmax()), size)
    assert top - 3 <= peak[0] < top + 7 and left - 3 <= peak[1] < left + 7, peak
    assert float(m[0].median()) == pytest.approx(1.0, abs=0.35)  # ordinary texture reads ≈ 1
    dimmed = self_dissimilarity_map(x * 0.4)
    assert torch.allclose(dimmed, m, rtol=1e-3, atol=1e-3), "a change of gain alone must not move the map"
    assert torch.allclose(self_dissimilarity_map(x.flip(-1)), m.flip(-1), atol=1e-3)  # float summation order only


@pytest.mark.parametrize("size", [32, 64])
def test_self_dissimilarity_is_the_nearest_other_patch_over_the_median(size):
    """The map against its definition, computed directly: every query patch's Euclidean distance
    to the nearest reference patch (every pixel) at least EXCLUDE away, over the image's median."""
    import torch.nn.functional as F

    from danvae.models import self_similarity as ss
    from danvae.models.score_maps import normalise_brightness

    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    xb = ss._blur(normalise_brightness(x))
    q = F.unfold(xb, ss.PATCH, stride=ss.STRIDE).transpose(1, 2)
    r = F.unfold(xb, ss.PATCH, stride=1).transpose(1, 2)
    q, r = q - q.mean(2, keepdim=True), r - r.mean(2, keepdim=True)
    gq, gr = ss._patch_grid(size), ss._patch_grid(size, 1)
    q_pos = torch.cartesian_prod(torch.arange(gq), torch.arange(gq)).float() * ss.STRIDE
    r_pos = torch.cartesian_prod(torch.arange(gr), torch.arange(gr)).float()
    far = torch.cdist(q_pos, r_pos) >= ss.EXCLUDE
    nearest = torch.stack([torch.stack([(r[i][far[j]] - q[i, j]).norm(dim=1).min() for j in range(len(q_pos))])
                           for i in range(len(x))])
    expected = ss._to_pixels(nearest, len(x), size, size)
    got = ss.self_dissimilarity_map(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.allclose(ss.self_dissimilarity_map(x, whole_batch=True), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["danvae", "danvae-global"])
def test_scores_with_precomputed_self_dissimilarity_equal_the_full_pass(name):
    from danvae.scoring import score_images, self_dissimilarities

    model = build_model(ModelConfig(name=name, zx_dim=4, zy_dim=2), 3, SIZE).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    y = images.max(-1).mean((1, 2)) / 255.0
    full, _ = score_images(model, images, y, batch_size=2)
    known = self_dissimilarities(images, batch_size=3)
    assert known.shape == (5, SIZE, SIZE)
    reused, _ = score_images(model, images, y, batch_size=2, dissimilarity=known)
    pd.testing.assert_frame_equal(full, reused)
    shuffled, _ = score_images(model, images, y, batch_size=2, dissimilarity=known[::-1].copy())
    assert not np.allclose(shuffled["selfsim_max"], full["selfsim_max"])  # the maps given are the maps used


def test_noise_level_estimates_gaussian_noise_and_ignores_smooth_structure():
    from danvae.models.score_maps import noise_level

    gen = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0.2, 0.8, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)  # smooth: no noise
    assert float(noise_level(ramp)) < 1e-4
    for sigma in (0.01, 0.03):
        noisy = ramp + sigma * torch.randn(1, 1, 64, 64, generator=gen)
        assert abs(float(noise_level(noisy)) - sigma) < 0.1 * sigma


def test_the_head_sees_the_noise_level_when_asked():
    from danvae.config import ModelConfig
    from danvae.models import build_model

    torch.manual_seed(0)
    plain, aware = (build_model(ModelConfig(head_noise=flag), 3, 32).eval() for flag in (False, True))
    assert aware.head.enc1[0].in_channels == plain.head.enc1[0].in_channels + 1
    x = (0.5 + 0.1 * torch.randn(2, 3, 32, 32)).clamp(0, 1)
    y = torch.full((2,), 0.5)
    with torch.no_grad():
        aware.head.enc1[0].weight[:, -1].zero_()  # the noise channel cut: the head is blind to it
        blind = aware.scores(x, y)[0]["head_max"]
        aware.head.enc1[0].weight[:, -1].fill_(5.0)  # the same images, the channel wired
        seeing = aware.scores(x, y)[0]["head_max"]
    assert torch.isfinite(seeing).all() and not torch.allclose(blind, seeing)


def test_a_full_resolution_head_resolves_single_pixel_detail():
    """Stripes one pixel wide: the half-resolution head (an upsampled 16×16 map at 32 px) cannot
    draw them; the full-resolution head learns them."""
    from danvae.models.anomaly_head import AnomalyHead, focal_loss

    torch.manual_seed(0)
    x, x_hat, dissimilarity = torch.rand(4, 3, SIZE, SIZE), torch.rand(4, 3, SIZE, SIZE), torch.ones(4, SIZE, SIZE)
    target = torch.zeros(4, SIZE, SIZE)
    target[:, :, ::2] = 1.0
    accuracy = {}
    for full in (False, True):
        head = AnomalyHead(3, width=8, full_resolution=full)
        opt = torch.optim.Adam(head.parameters(), lr=0.01)
        for _ in range(150):
            loss = focal_loss(head(x, x_hat, dissimilarity), target).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            accuracy[full] = float(((head(x, x_hat, dissimilarity) > 0) == (target > 0.5)).float().mean())
    assert accuracy[True] > 0.95 and accuracy[False] < 0.8, accuracy


def test_focal_loss_at_gamma_0_is_the_alpha_weighted_cross_entropy_and_the_config_reaches_the_head_loss():
    from danvae.models import anomaly_head
    from danvae.train.schedule import loss_weights

    logits = torch.randn(2, SIZE, SIZE)
    target = (torch.rand(2, SIZE, SIZE) < 0.1).float()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weighted = (0.6 * target + 0.4 * (1 - target)) * ce
    assert torch.allclose(anomaly_head.focal_loss(logits, target, gamma=0.0, alpha=0.6), weighted.flatten(1).mean(1))
    weights = loss_weights(TrainConfig(focal_gamma=0.0, focal_alpha=0.6, warmup_epochs=0), 5, 3, SIZE)
    assert (weights.focal_gamma, weights.focal_alpha) == (0.0, 0.6)
    model, batch, x_hat = _head_case(slice(8, 12))
    # focusing (gamma 2) down-weighs the many easy normal pixels: a smaller loss than plain BCE
    assert model.head_loss(batch, x_hat, gamma=2.0) < model.head_loss(batch, x_hat, gamma=0.0)


def test_a_hand_drawn_mask_is_a_loose_bound_the_band_around_it_and_its_weakest_pixels_teach_nothing():
    from danvae.models.anomaly_head import drawn_mask_target

    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    mask[:, 10:14, 10:20] = True  # 40 pixels in each image
    logits = torch.randn(2, SIZE, SIZE)
    drawn = torch.tensor([True, False])
    target, taught = drawn_mask_target(logits, mask, drawn, band=2, share=0.5)
    assert torch.equal(target[1], mask[1].float()) and taught[1].all(), "an exact mask is taught as it is"
    ring = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    ring[8:16, 8:22] = True
    ring &= ~mask[0]
    assert not taught[0][ring].any() and taught[0][~ring & ~mask[0]].all()
    positive = target[0].bool()
    assert int(positive.sum()) == 20 and not (positive & ~mask[0]).any()
    assert logits[0][positive].min() >= logits[0][mask[0] & ~positive].max(), "the head's strongest half is taught"
    assert torch.equal(taught[0] & mask[0], positive), "the rest of the mask teaches nothing"
    target, taught = drawn_mask_target(logits, mask, drawn, band=0, share=1.0)
    assert torch.equal(target, mask.float()) and taught.all()


def test_loose_bounds_reach_the_head_loss_only_for_hand_drawn_masks():
    from danvae.train.schedule import loss_weights

    weights = loss_weights(TrainConfig(drawn_mask_band=3, drawn_mask_share=0.25), 20, 3, SIZE)
    assert (weights.drawn_band, weights.drawn_share) == (3, 0.25)
    model, batch, x_hat = _head_case(slice(8, 16))
    exact = model.head_loss(batch, x_hat)
    batch.drawn = torch.tensor([False, False])
    assert torch.equal(model.head_loss(batch, x_hat, drawn_band=2, drawn_share=0.5), exact)
    batch.drawn = torch.tensor([False, True])
    assert torch.equal(model.head_loss(batch, x_hat), exact), "the defaults take a drawn mask as exact"
    # the untrained head rates every pixel a defect with probability 0.01: half the mask's
    # positives teach nothing, so the loss falls
    assert model.head_loss(batch, x_hat, drawn_share=0.5) < exact
