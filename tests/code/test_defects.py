"""Training-time synthetic defects and relighting: changes stay inside the mask, strength scales them."""
from __future__ import annotations

import pytest
import torch

from danvae.augment import FAMILIES, DefectBank, relight, synthesize_defects
from danvae.augment.defects import apply_family


def _surfaces(n=8, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * 0.5 + 0.25
    texture = torch.rand(n, 3, size, size, generator=g) * 0.3
    return ((base + texture).clamp(0, 1) * 255).round() / 255


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_changes_pixels_only_inside_its_mask(family):
    x = _surfaces()
    out, mask = apply_family(family, x, torch.Generator().manual_seed(1), strength=1.0)
    assert out.shape == x.shape and mask.shape == (8, 64, 64) and mask.dtype == torch.bool
    changed = (out != x).any(dim=1)
    assert not (changed & ~mask).any(), "a pixel outside the mask changed"
    assert changed.any(dim=(1, 2)).float().mean() >= 0.75, "most images get a visible defect"
    share = mask.float().mean(dim=(1, 2))
    assert (share > 0).all() and (share < 0.15).all(), "defects are small"
    assert torch.equal(out, (out * 255).round() / 255), "results stay on the uint8 grid"


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_scales_the_change(family):
    x = _surfaces()
    weak, m1 = apply_family(family, x, torch.Generator().manual_seed(2), strength=0.3)
    strong, m2 = apply_family(family, x, torch.Generator().manual_seed(2), strength=1.0)
    assert torch.equal(m1, m2)
    assert (strong - x).abs().sum() > 2 * (weak - x).abs().sum()


def test_colour_casts_range_from_faint_to_strong():
    """A blob's colour cast (its mean change inside the mask, less the grey part) runs from
    faint to an obvious stain, so the head also learns to flag a strong discolouration."""
    x = _surfaces(64)
    out, mask = apply_family("blob_shift", x, torch.Generator().manual_seed(4))
    m = mask[:, None].float()
    change = ((out - x) * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3))
    cast = (change - change.mean(dim=1, keepdim=True)).norm(dim=1)
    assert cast.min() < 0.05 and cast.max() > 0.25


def test_a_batch_mixes_families_and_is_deterministic():
    x = _surfaces(16)
    a, ma = synthesize_defects(x, torch.Generator().manual_seed(3))
    b, mb = synthesize_defects(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(ma, mb)
    with pytest.raises(ValueError, match="unknown synthetic defect family"):
        apply_family("glitter", x, torch.Generator())


def test_relighting_changes_brightness_and_stays_on_the_grid():
    x = _surfaces(32)
    out = relight(x, torch.Generator().manual_seed(0), gain=(0.35, 0.5))
    assert out.mean() < 0.7 * x.mean()
    assert torch.equal(out, (out * 255).round() / 255) and out.min() >= 0 and out.max() <= 1


def _labelled(n=6, size=64, seed=4):
    """Surfaces with a dark disc (radius 3) planted at a known place, and its mask."""
    x = _surfaces(n, size, seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        masks[i] = (yy - 10 - 7 * i) ** 2 + (xx - 50 + 5 * i) ** 2 <= 9
    return torch.where(masks[:, None], x * 0.4, x), masks


def test_a_transplanted_defect_changes_pixels_only_inside_its_mask():
    images, masks = _labelled()
    masks[0] = False  # an anomaly with an empty mask adds nothing to the bank
    bank = DefectBank.from_anomalies(images, masks)
    assert len(bank) == 5 and all(m.sum() == masks[1].sum() for m in bank.masks)
    x = _surfaces(16, 32, seed=7)
    out, mask = bank.paste(x, torch.Generator().manual_seed(0))
    changed = (out != x).any(dim=1)
    assert not (changed & ~mask).any(), "a pixel outside the mask changed"
    assert (mask.flatten(1).sum(1) == masks[1].sum()).all(), "the whole defect lands on the image"
    assert changed.any(dim=(1, 2)).all()
    assert torch.equal(out, (out * 255).round() / 255), "results stay on the uint8 grid"


def test_a_transplanted_defect_keeps_its_relative_contrast_under_any_lighting():
    """The disc was 0.4× its surroundings: pasted on a bright or a dim surface it stays about 0.4×."""
    bank = DefectBank.from_anomalies(*_labelled())
    for level in (0.2, 0.8):
        x = torch.full((4, 3, 32, 32), level)
        out, mask = bank.paste(x, torch.Generator().manual_seed(1))
        inside = out.permute(0, 2, 3, 1)[mask].mean() / level
        assert abs(float(inside) - 0.4) < 0.06


def test_a_transplant_strength_below_one_pastes_a_fainter_copy_of_the_same_defect():
    """The disc is 0.4× its surroundings; raised to a power in [0.5, 0.5] it is 0.4**0.5 ≈ 0.63×."""
    bank = DefectBank.from_anomalies(*_labelled())
    x = torch.full((4, 3, 32, 32), 0.6)
    full, m_full = bank.paste(x, torch.Generator().manual_seed(2))
    faint, m_faint = bank.paste(x, torch.Generator().manual_seed(2), strength=(0.5, 0.5))
    assert torch.equal(m_full, m_faint), "the same defects land in the same places"
    inside = faint.permute(0, 2, 3, 1)[m_faint].mean() / 0.6
    assert abs(float(inside) - 0.4**0.5) < 0.06
    assert (faint - x).abs().sum() < 0.8 * (full - x).abs().sum()
    assert not ((faint != x).any(dim=1) & ~m_faint).any(), "a pixel outside the mask changed"
    # a range draws a power per defect: the contrasts differ between images
    mixed, m_mixed = bank.paste(torch.full((16, 3, 32, 32), 0.6), torch.Generator().manual_seed(3), strength=(0.3, 1.0))
    per_image = torch.stack([mixed[i].permute(1, 2, 0)[m_mixed[i]].mean() for i in range(16)])
    assert per_image.max() - per_image.min() > 0.1


def test_an_empty_bank_says_so():
    images, masks = _labelled(2)
    empty = DefectBank.from_anomalies(images, torch.zeros_like(masks))
    assert len(empty) == 0
    with pytest.raises(ValueError, match="no labelled anomaly has a mask"):
        empty.paste(_surfaces(2), torch.Generator())


def test_a_matched_background_takes_the_defect_alone_off_a_repeating_texture():
    """Stripes with a disc planted at 0.4×: relative to the best-matching patch of the same image
    the disc's change is 0.4× everywhere; relative to the local mean it also holds the stripes."""
    n, size = 4, 64
    xx = torch.arange(size).float()
    stripes = (0.5 + 0.3 * torch.cos(2 * torch.pi * xx / 5)).expand(n, 3, size, size).clone()
    yy, xg = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.stack([(yy - 20 - 6 * i) ** 2 + (xg - 30 - 3 * i) ** 2 <= 16 for i in range(n)])
    images = torch.where(masks[:, None], stripes * 0.4, stripes)
    factor = (0.4 * stripes + 0.02) / (stripes + 0.02)  # what a defect-free background gives
    for background, worst in (("matched", 0.02), ("local_mean", None)):
        bank = DefectBank.from_anomalies(images, masks, background)
        err = max(float((r[:, m] - factor[i][:, masks[i]].view(3, -1)).abs().max()) for i, (r, m) in
                  enumerate(zip(bank.ratios, bank.masks)))
        if worst is not None:
            assert err < worst
        else:
            assert err > 0.2, "the local mean keeps the stripes in the ratio"
    with pytest.raises(ValueError, match="background"):
        DefectBank.from_anomalies(images, masks, "median")


def test_a_transplant_margin_carries_the_change_a_tight_mask_leaves_out():
    """A dark disc of radius 5 labelled with a mask of radius 3: with a margin the whole disc is
    pasted, the target stays the labelled mask; without one, only the masked part moves."""
    n, size = 4, 48
    x = torch.full((n, 3, size, size), 0.6)
    yy, xg = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    d2 = torch.stack([(yy - 20 - 3 * i) ** 2 + (xg - 24) ** 2 for i in range(n)])
    images, masks = torch.where((d2 <= 25)[:, None], x * 0.5, x), d2 <= 9
    receiver = torch.full((8, 3, 32, 32), 0.5)
    for margin, outside in ((0, False), (3, True)):
        bank = DefectBank.from_anomalies(images, masks, "matched", margin)
        out, mask = bank.paste(receiver, torch.Generator().manual_seed(0))
        changed = (out != receiver).any(dim=1)
        assert (mask.flatten(1).sum(1) == masks[0].sum()).all(), "the target is the labelled mask"
        assert bool((changed & ~mask).any()) == outside
        if outside:
            assert changed.flatten(1).sum(1).min() >= (d2[0] <= 25).sum(), "the whole disc moves"
