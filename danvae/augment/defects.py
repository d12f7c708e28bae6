"""Synthetic local defects pasted onto normal images, each with its exact mask.

    x_bad, mask = synthesize_defects(x, generator, families=FAMILIES, strength=1.0)

``x`` is a batch B×C×H×W in [0, 1] (images decoded from uint8). Every family changes
pixels only inside the mask it returns, and the size of the change scales with
``strength``. Families are generic (DRAEM / CutPaste / NSA style) and know nothing of
any test defect:

- ``blob_texture``: a noise blob filled from another image of the batch;
- ``blob_shift``: a noise blob with a brightness shift and a colour cast, faint to strong;
- ``line``: a thin polyline, darker or brighter;
- ``dots``: a few small discs, darker or brighter;
- ``cutpaste``: a rectangle of the same image moved from elsewhere;
- ``seamless``: a blob whose fine detail is replaced by the same texture from
  elsewhere in the image while the local mean is kept (gradient-domain-like blending,
  so no visible seam).

Results are rounded to the uint8 grid, as real images are.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from danvae.config import DEFECT_FAMILIES as FAMILIES

Device = torch.device | str
TINT = (0.03, 0.4)  # range of the colour cast of ``blob_shift`` (norm of the RGB shift, in [0, 1] units)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, device) -> torch.Tensor:
    return (torch.rand(n, generator=g) * (hi - lo) + lo).to(device)


def _grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return yy, xx


def blob_masks(n: int, h: int, w: int, g: torch.Generator, device: Device, area: tuple[float, float] = (0.004, 0.04),
               side: int | None = None) -> torch.Tensor:
    """Irregular blobs (thresholded smooth noise under a random Gaussian window), n×H×W bool,
    each covering a random share within ``area`` of a ``side``² image (default: this one)."""
    side = side or min(h, w)
    cells = max(2, int(torch.randint(3, 9, (1,), generator=g)) * min(h, w) // side)
    noise = torch.randn(n, 1, cells, cells, generator=g).to(device)
    noise = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[:, 0]
    yy, xx = _grid(h, w, device)
    cy, cx = _uniform(g, n, 0.15, 0.85, device) * h, _uniform(g, n, 0.15, 0.85, device) * w
    sigma = _uniform(g, n, 0.06, 0.16, device) * side
    window = torch.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * sigma[:, None, None] ** 2))
    field = (noise - noise.amin(dim=(1, 2), keepdim=True) + 0.5) * window
    share = _uniform(g, n, *area, device)
    k = (share * side * side).clamp(min=4, max=h * w / 4).long()
    flat = field.flatten(1)
    kth = flat.sort(dim=1, descending=True).values.gather(1, (k - 1).clamp(max=h * w - 1)[:, None])
    return (flat >= kth).view(n, h, w)


def polyline_masks(n: int, h: int, w: int, g: torch.Generator, device: Device, side: int | None = None) -> torch.Tensor:
    """Thin polylines of 1–3 segments, 1–2 px wide, n×H×W bool (lengths relative to ``side``)."""
    yy, xx = _grid(h, w, device)
    out = torch.zeros(n, h, w, dtype=torch.bool, device=device)
    size = side or min(h, w)
    for i in range(n):
        segments = int(torch.randint(1, 4, (1,), generator=g))
        p = torch.rand(2, generator=g) * torch.tensor([h, w]) * 0.7 + torch.tensor([h, w]) * 0.15
        width = float(_uniform(g, 1, 0.5, 1.2, "cpu"))
        angle = float(torch.rand(1, generator=g)) * 2 * math.pi
        for _ in range(segments):
            angle += float(torch.randn(1, generator=g)) * 0.6
            length = float(_uniform(g, 1, 0.08, 0.3, "cpu")) * size
            q = p + length * torch.tensor([math.sin(angle), math.cos(angle)])
            a, b = p.to(device), q.to(device)
            d = b - a
            t = (((yy - a[0]) * d[0] + (xx - a[1]) * d[1]) / d.pow(2).sum().clamp(min=1e-6)).clamp(0, 1)
            dist = ((yy - a[0] - t * d[0]) ** 2 + (xx - a[1] - t * d[1]) ** 2).sqrt()
            out[i] |= dist <= width
            p = q
    return out


def dot_masks(n: int, h: int, w: int, g: torch.Generator, device: Device, side: int | None = None) -> torch.Tensor:
    """1–4 small discs of radius 1–3 px at 64 px (scaled with ``side``), n×H×W bool."""
    yy, xx = _grid(h, w, device)
    out = torch.zeros(n, h, w, dtype=torch.bool, device=device)
    scale = (side or min(h, w)) / 64
    for i in range(n):
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            cy, cx = float(torch.rand(1, generator=g)) * h, float(torch.rand(1, generator=g)) * w
            r = float(_uniform(g, 1, 1.0, 3.0, "cpu")) * max(scale, 0.5)
            out[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out


def rect_masks(n: int, h: int, w: int, g: torch.Generator, device: Device, side: int | None = None) -> torch.Tensor:
    """Axis-aligned rectangles of 4–20 % of ``side``, n×H×W bool."""
    yy, xx = _grid(h, w, device)
    side = side or min(h, w)
    rh = (_uniform(g, n, 0.04, 0.2, device) * side).clamp(min=2, max=h / 2)
    rw = (_uniform(g, n, 0.04, 0.2, device) * side).clamp(min=2, max=w / 2)
    y0 = _uniform(g, n, 0, 1, device) * (h - rh)
    x0 = _uniform(g, n, 0, 1, device) * (w - rw)
    return ((yy >= y0[:, None, None]) & (yy < (y0 + rh)[:, None, None])
            & (xx >= x0[:, None, None]) & (xx < (x0 + rw)[:, None, None]))


def _blur(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


def _rolled(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image shifted by a random offset of at least a quarter of its side (a patch from elsewhere)."""
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for i in range(len(x)):
        dy = int(torch.randint(h // 4, h - h // 4 + 1, (1,), generator=g))
        dx = int(torch.randint(w // 4, w - w // 4 + 1, (1,), generator=g))
        out[i] = torch.roll(x[i], shifts=(dy, dx), dims=(-2, -1))
    return out


def _signed_contrast(x: torch.Tensor, m: torch.Tensor, amount: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Darken or brighten (random per image) by ``amount`` of the headroom inside ``m``."""
    sign = (torch.rand(len(x), generator=g) < 0.5).to(x.device)
    a = amount[:, None, None, None]
    darker = x * (1 - a)
    brighter = x + a * (1 - x)
    target = torch.where(sign[:, None, None, None], darker, brighter)
    return x + m * (target - x)


def _blob_texture(x, g, strength, side):
    m = blob_masks(len(x), *x.shape[-2:], g, x.device, side=side)[:, None].float()
    src = torch.roll(x, 1, dims=0).flip(-1) if len(x) > 1 else x.flip(-1).flip(-2)
    beta = _uniform(g, len(x), 0.3, 1.0, x.device)[:, None, None, None] * strength
    return x + beta * m * (src - x), m[:, 0]


def _blob_shift(x, g, strength, side):
    m = blob_masks(len(x), *x.shape[-2:], g, x.device, side=side)[:, None].float()
    gain = _uniform(g, len(x), 0.08, 0.35, x.device) * torch.where(
        torch.rand(len(x), generator=g).to(x.device) < 0.5, -1.0, 1.0)
    # a colour cast of random hue, faint to strong (log-uniform size): the head must also flag
    # an obvious stain, not only the faint ones (with casts of ≤ 0.06 it missed large colour stains)
    direction = torch.randn(len(x), x.shape[1], generator=g)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp(min=1e-6)
    size = torch.empty(len(x), 1).uniform_(math.log(TINT[0]), math.log(TINT[1]), generator=g).exp()
    tint = (direction * size).to(x.device)
    shifted = x * (1 + gain[:, None, None, None]) + tint[:, :, None, None]
    return x + strength * m * (shifted - x), m[:, 0]


def _line(x, g, strength, side):
    m = polyline_masks(len(x), *x.shape[-2:], g, x.device, side)[:, None].float()
    return _signed_contrast(x, m, _uniform(g, len(x), 0.12, 0.45, x.device) * strength, g), m[:, 0]


def _dots(x, g, strength, side):
    m = dot_masks(len(x), *x.shape[-2:], g, x.device, side)[:, None].float()
    return _signed_contrast(x, m, _uniform(g, len(x), 0.12, 0.45, x.device) * strength, g), m[:, 0]


def _cutpaste(x, g, strength, side):
    m = rect_masks(len(x), *x.shape[-2:], g, x.device, side)[:, None].float()
    src = _rolled(x, g)
    jitter = 1 + (torch.rand(len(x), 1, 1, 1, generator=g).to(x.device) - 0.5) * 0.2
    beta = _uniform(g, len(x), 0.5, 1.0, x.device)[:, None, None, None] * strength
    return x + beta * m * (src * jitter - x), m[:, 0]


def _seamless(x, g, strength, side):
    mask = blob_masks(len(x), *x.shape[-2:], g, x.device, area=(0.01, 0.06), side=side)[:, None].float()
    k = max(3, ((side or min(x.shape[-2:])) // 16) | 1)
    soft = _blur(mask, k) * mask  # fades toward the border, zero outside the mask
    src = _rolled(x, g)
    detail = (src - _blur(src, k)) - (x - _blur(x, k))
    gain = _uniform(g, len(x), 1.0, 2.0, x.device)[:, None, None, None] * strength
    return x + gain * soft * detail, mask[:, 0]


_FAMILY_FNS: dict[str, Callable] = {
    "blob_texture": _blob_texture, "blob_shift": _blob_shift, "line": _line, "dots": _dots,
    "cutpaste": _cutpaste, "seamless": _seamless,
}


def apply_family(family: str, x: torch.Tensor, g: torch.Generator, strength: float = 1.0, side: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One family on every image of ``x``: the changed images (on the uint8 grid) and B×H×W bool
    masks. Sizes are relative to a ``side``-pixel image (default: ``x``'s own; a training crop
    passes the whole image's side, so its defects keep their real size)."""
    if family not in _FAMILY_FNS:
        raise ValueError(f"unknown synthetic defect family {family!r}; choose from {', '.join(FAMILIES)}")
    out, mask = _FAMILY_FNS[family](x, g, strength, side)
    mask = mask > 0
    out = torch.where(mask[:, None], out.clamp(0, 1).mul(255).round().div(255), x)
    return out, mask


def synthesize_defects(x: torch.Tensor, g: torch.Generator, families: Sequence[str] = FAMILIES,
                       strength: float = 1.0, side: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A defect of a random family (from ``families``) on each image: images and B×H×W bool masks."""
    if not families:
        raise ValueError("no synthetic defect family given")
    choice = torch.randint(len(families), (len(x),), generator=g)
    out, mask = x.clone(), torch.zeros(len(x), *x.shape[-2:], dtype=torch.bool, device=x.device)
    for i, family in enumerate(families):
        idx = torch.nonzero(choice == i).flatten()
        if len(idx):
            out[idx.to(x.device)], mask[idx.to(x.device)] = apply_family(family, x[idx.to(x.device)], g, strength, side)
    return out, mask
