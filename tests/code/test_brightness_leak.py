"""The linear brightness leak of pooled z_x: what it measures, and that training on it removes it."""
from __future__ import annotations

import torch

from danvae.config import ModelConfig
from danvae.models import Batch, LossWeights, build_model
from danvae.models.brightness_leak import linear_leak, reverse_gradient


def test_the_leak_is_the_variance_a_channel_explains():
    torch.manual_seed(0)
    y = torch.rand(256)
    keep = torch.ones(256, dtype=torch.bool)
    copy = torch.stack([3 * y + 1, torch.randn(256)], dim=1)  # channel 0 carries y whole, channel 1 nothing
    assert torch.isclose(linear_leak(copy, y, keep), y.var(unbiased=False), rtol=0.05)
    unrelated = torch.randn(256, 2)
    assert float(linear_leak(unrelated, y, keep)) < 0.05 * float(y.var())


def test_the_leak_counts_only_kept_rows_and_needs_a_few():
    y = torch.linspace(0, 1, 8)
    features = torch.stack([y, y], dim=1)
    keep = torch.tensor([True] * 4 + [False] * 4)
    features_changed = features.clone()
    features_changed[4:] = 100.0  # rows left out do not count
    assert torch.isclose(linear_leak(features, y, keep), linear_leak(features_changed, y, keep))
    assert float(linear_leak(features, y, torch.tensor([True] * 3 + [False] * 5))) == 0.0


def test_descending_the_leak_decorrelates_the_features():
    torch.manual_seed(1)
    y = torch.rand(64)
    features = torch.nn.Parameter(torch.stack([y + 0.1 * torch.randn(64), torch.randn(64)], dim=1))
    keep = torch.ones(64, dtype=torch.bool)
    before = float(linear_leak(features, y, keep).detach())
    opt = torch.optim.SGD([features], lr=5.0)
    for _ in range(200):
        opt.zero_grad()
        linear_leak(features, y, keep).backward()
        opt.step()
    assert before > 0.5 * float(y.var())
    assert float(linear_leak(features, y, keep).detach()) < 0.01 * before


def test_reverse_gradient_keeps_values_and_negates_gradients():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    out = reverse_gradient(x)
    assert torch.equal(out, x.detach())
    (out * torch.tensor([3.0, 4.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-3.0, -4.0]))


def test_the_model_loss_reports_the_leak_and_its_weight_enters_the_total():
    size = 32
    torch.manual_seed(0)
    x = torch.rand(8, 3, size, size) * torch.linspace(0.3, 1.0, 8).view(8, 1, 1, 1)
    batch = Batch(x, x.mean(dim=(1, 2, 3)), torch.ones(8, dtype=torch.bool), torch.zeros(8, dtype=torch.bool))
    totals = {}
    for weight in (0.0, 1000.0):
        torch.manual_seed(0)
        model = build_model(ModelConfig(zx_dim=4, zy_dim=2, decorrelation=weight), 3, size)
        torch.manual_seed(1)
        with torch.no_grad():
            terms = model.loss(batch, LossWeights(alpha=1.0))
        totals[weight] = (terms["total"], terms["leak"])
    (base, leak), (weighted, same_leak) = totals[0.0], totals[1000.0]
    assert float(leak) > 0 and torch.isclose(leak, same_leak)
    assert float(weighted) > float(base)
