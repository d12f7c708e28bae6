"""The linear brightness leak of pooled z_x: what it measures, and that training on it removes it."""
from __future__ import annotations

import torch
from sklearn.linear_model import LinearRegression

from danvae.config import ModelConfig
from danvae.models import Batch, LossWeights, build_model
from danvae.models.brightness_leak import LinearLeak, reverse_gradient


def _rows(n: int, seed: int, width: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=gen), torch.randn(n, width, generator=gen)


def test_the_leak_is_the_variance_a_linear_regression_explains():
    probe = LinearLeak(3).eval()
    y, noise = _rows(4096, 0)
    keep = torch.ones(4096, dtype=torch.bool)
    # no channel alone carries y, their difference carries it whole: the leak is all of var(y)
    hidden = torch.stack([noise[:, 0] + y, noise[:, 0], noise[:, 1]], dim=1)
    assert torch.isclose(probe(hidden, y, keep), y.var(unbiased=False), rtol=0.05)  # less its small ridge
    assert float(probe(noise, y, keep)) < 0.01 * float(y.var())


def test_the_running_estimate_averages_batches_and_skips_rows_left_out():
    probe = LinearLeak(3, decay=0.9).train()
    for seed in range(60):  # 60 batches of 16: each alone is mostly noise, the average is not
        y, noise = _rows(32, seed)
        keep = torch.arange(32) < 16
        features = torch.stack([noise[:, 0] + y, noise[:, 0], noise[:, 1]], dim=1)
        features[16:] = 100.0  # rows not kept do not count
        leak = probe(features, y, keep)
    assert 0.6 * (1 / 12) < float(leak.detach()) < 1.4 * (1 / 12)  # var of U(0, 1)
    before = probe.cross.clone()
    probe(features, y, torch.arange(32) < 3)  # too few rows: the estimate stays
    assert torch.equal(probe.cross, before)


def test_descending_the_leak_takes_brightness_out_of_the_features():
    # features: a trainable mix of brightness and three nuisance-free inputs, plus content the encoder cannot change
    torch.manual_seed(1)
    encoder = torch.nn.Linear(4, 3)
    with torch.no_grad():
        encoder.weight[:, 0] = torch.tensor([3.0, 2.0, -2.0])

    def features(y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return encoder(torch.cat([y[:, None], noise[:, :3]], dim=1)) + noise[:, 3:]

    def held_out_r2() -> float:
        y, noise = _rows(4096, 99, width=6)
        z = features(y, noise).detach().numpy()
        return float(LinearRegression().fit(z, y.numpy()).score(z, y.numpy()))

    probe = LinearLeak(3).train()
    opt = torch.optim.SGD(encoder.parameters(), lr=5.0)
    before = held_out_r2()
    for seed in range(200):
        y, noise = _rows(16, seed, width=6)
        opt.zero_grad()
        probe(features(y, noise), y, torch.ones(16, dtype=torch.bool)).backward()
        opt.step()
    assert before > 0.5
    assert held_out_r2() < 0.05


def test_reverse_gradient_keeps_values_and_negates_gradients():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    out = reverse_gradient(x)
    assert torch.equal(out, x.detach())
    (out * torch.tensor([3.0, 4.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-3.0, -4.0]))


def test_the_model_adds_the_leak_only_when_weighted():
    size = 32
    torch.manual_seed(0)
    x = torch.rand(8, 3, size, size) * torch.linspace(0.3, 1.0, 8).view(8, 1, 1, 1)
    batch = Batch(x, x.mean(dim=(1, 2, 3)), torch.ones(8, dtype=torch.bool), torch.zeros(8, dtype=torch.bool))
    off = build_model(ModelConfig(zx_dim=4, zy_dim=2, decorrelation=0.0), 3, size)
    assert off.linear_leak is None and not any("linear_leak" in k for k in off.state_dict())  # older files load
    on = build_model(ModelConfig(zx_dim=4, zy_dim=2, decorrelation=1000.0), 3, size)
    on.load_state_dict(off.state_dict(), strict=False)
    terms = {}
    for name, model in (("off", off), ("on", on)):
        torch.manual_seed(1)
        with torch.no_grad():
            terms[name] = model.loss(batch, LossWeights(alpha=1.0))
    assert float(terms["off"]["leak"]) == 0.0 and float(terms["on"]["leak"]) > 0
    assert float(terms["on"]["total"]) > float(terms["off"]["total"])
    assert "linear_leak.cross" in on.state_dict()  # saved, so a resumed run goes on exactly


def test_a_detector_saved_before_the_option_existed_still_loads_and_scores_the_same(lighting_run, tmp_path):
    from danvae import Detector
    from danvae.model_file import load_weights

    det = lighting_run.detector
    assert det.model_config.decorrelation > 0 and det.model.linear_leak is not None
    path = det.save(tmp_path / "new")
    state = load_weights(path)
    del state["meta"]["model"]["decorrelation"]  # what a file of an earlier version holds
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if not k.startswith("linear_leak.")}
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / path.name)
    old = Detector.load(tmp_path / "old")
    assert old.model_config.decorrelation == 0.0 and old.model.linear_leak is None
    images, lighting = lighting_run.images[:8], lighting_run.lighting[:8]
    scores = det.score_table(images, nuisance=lighting)["score"]
    assert old.score_table(images, nuisance=lighting)["score"].equals(scores)
