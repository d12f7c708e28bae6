"""Real labelled defects transplanted onto training normals, each with its exact mask.

    bank = DefectBank.from_anomalies(images, masks)      # labelled anomalies, B×C×H×W in [0, 1]
    x_bad, mask = bank.paste(x, generator)

A labelled anomaly with a known mask is worth one image to the head; transplanted, it is
worth one per normal it lands on. Each defect is kept as its *relative* change, the
anomaly divided by its own local background (a normalised convolution that leaves the
defect's pixels out), so a dark stain on a bright image stays a proportionally dark stain
on a dim one and the surface texture under the defect comes from the receiving image.
Each paste takes a random defect of the bank, a random flip and quarter turn, a random
place and, with a ``strength`` range, a random power of its relative change (below 1: a
fainter copy of the same defect); pixels change only inside the pasted cut (the mask itself
unless a ``margin`` is asked for).

The background is by default the local mean around the defect, so the relative change also
holds the donor surface's own texture under the defect (harmless where a defect scales the
texture, a stray copy of the donor's texture where it replaces it). With
``background="matched"`` it is instead the patch of the same image whose ring around the
defect best matches the defect's own ring (a texture repeats itself; the defect does not):
the relative change is then the defect's alone. ``margin`` cuts each defect with that many
pixels around its mask: a hand-drawn mask rarely holds all of a defect's change (a dent's
shading reaches past it), and a cut at the mask's edge pastes a fragment. The pasted target
stays the labelled mask; around it the matched background leaves unchanged pixels at 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from danvae.models.score_maps import dilate

_BACKGROUND_KERNEL = 9
_CANDIDATES = 4096  # windows compared when matching a defect's surroundings
_FLOOR = 0.02  # added to pixel and background, so near-black backgrounds do not turn noise into huge ratios


def _local_background(x: torch.Tensor, keep: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of ``x`` (C×H×W) over the ``keep`` pixels of a k×k window; where a window holds none,
    the mean of all kept pixels."""
    num = F.avg_pool2d((x * keep)[None], k, stride=1, padding=k // 2, count_include_pad=False)[0]
    den = F.avg_pool2d(keep[None].float(), k, stride=1, padding=k // 2, count_include_pad=False)[0]
    fallback = (x * keep).flatten(1).sum(1) / keep.sum().clamp(min=1)
    return torch.where(den > 0.05, num / den.clamp(min=1e-6), fallback[:, None, None])


def _matched_background(x: torch.Tensor, m: torch.Tensor, box: tuple[int, int, int, int], ring: int
                        ) -> torch.Tensor | None:
    """What the surface of ``x`` (C×H×W) would look like under the defect in ``box`` (t, u, b, r):
    the window elsewhere in the image whose pixels around the defect's mask ``m`` (H×W) best
    match the defect's own (least squares), its gain matched; None when no window fits."""
    c, h, w = x.shape
    t, u, b, r = max(box[0] - ring, 0), max(box[1] - ring, 0), min(box[2] + ring, h), min(box[3] + ring, w)
    wh, ww = b - t, r - u
    around = (dilate(m[None], ring)[0] & ~m)[t:b, u:r].float()
    if around.sum() < 4:
        return None
    own = x[:, t:b, u:r]
    # every window of the image, or every s-th on large images (at most about _CANDIDATES)
    step = max(1, math.ceil(math.sqrt((h - wh + 1) * (w - ww + 1) / _CANDIDATES)))
    windows = F.unfold(x[None], (wh, ww), stride=step).view(c, wh, ww, -1)
    ys = torch.arange(0, h - wh + 1, step).repeat_interleave(len(range(0, w - ww + 1, step)))
    xs = torch.arange(0, w - ww + 1, step).repeat(len(range(0, h - wh + 1, step)))
    clear = (ys + wh <= t) | (ys >= b) | (xs + ww <= u) | (xs >= r)  # windows that do not overlap the defect
    if not clear.any():
        return None
    weight = around[None, :, :, None]
    gain = (own[..., None] * weight).sum((0, 1, 2)) / ((windows * weight).sum((0, 1, 2)) + 1e-6)
    cost = ((windows * gain - own[..., None]).pow(2) * weight).sum((0, 1, 2))
    best = int(torch.where(clear, cost, torch.full_like(cost, float("inf"))).argmin())
    background = x.clone()
    background[:, t:b, u:r] = windows[..., best] * gain[best]
    return background


class DefectBank:
    """The masked defects of labelled anomalies, as relative changes ready to paste."""

    def __init__(self, ratios: list[torch.Tensor], masks: list[torch.Tensor], cuts: list[torch.Tensor] | None = None):
        self.ratios = ratios  # each C×h×w: anomaly / its background inside the cut, 1 elsewhere
        self.masks = masks  # each h×w bool: the labelled defect, the target pasted with it
        self.cuts = masks if cuts is None else cuts  # each h×w bool: the pixels pasted (the mask and its margin)

    def __len__(self) -> int:
        return len(self.masks)

    @classmethod
    def from_anomalies(cls, images: torch.Tensor, masks: torch.Tensor, background: str = "local_mean",
                       margin: int = 0) -> "DefectBank":
        """``images`` B×C×H×W in [0, 1], ``masks`` B×H×W bool; images with an empty mask are skipped.
        ``background``: ``local_mean`` or ``matched``; ``margin``: pixels cut around each mask
        (see the module's docstring)."""
        if background not in ("local_mean", "matched"):
            raise ValueError(f"background must be local_mean or matched, got {background!r}")
        ratios, kept, cuts = [], [], []
        for x, m in zip(images.float(), masks.bool()):
            if not m.any():
                continue
            cut = dilate(m[None], margin)[0]
            pts = torch.nonzero(cut)
            (t, u), (b, r) = pts.min(0).values.tolist(), (pts.max(0).values + 1).tolist()
            k = max(_BACKGROUND_KERNEL, (2 * max(b - t, r - u)) | 1)
            matched = _matched_background(x, cut, (t, u, b, r), 3) if background == "matched" else None
            reference = _local_background(x, ~cut, k) if matched is None else matched
            ratio = torch.where(cut[None], (x + _FLOOR) / (reference + _FLOOR), torch.ones_like(x))
            ratios.append(ratio[:, t:b, u:r].clamp(0.05, 8.0))
            kept.append(m[t:b, u:r].clone())
            cuts.append(cut[t:b, u:r].clone())
        return cls(ratios, kept, cuts if margin else None)

    def paste(self, x: torch.Tensor, g: torch.Generator, strength: tuple[float, float] = (1.0, 1.0)
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random defect of the bank on each image of ``x`` (B×C×H×W in [0, 1]): the images on the
        uint8 grid and B×H×W bool masks. Each defect's relative change is raised to a power drawn
        uniformly from ``strength``. A defect larger than the image is cut to it."""
        if not len(self):
            raise ValueError("the defect bank is empty: no labelled anomaly has a mask")
        n, c, h, w = x.shape
        out = x.clone()
        mask = torch.zeros(n, h, w, dtype=torch.bool, device=x.device)
        pasted = torch.zeros_like(mask)
        pick = torch.randint(len(self), (n,), generator=g).tolist()
        turns = torch.randint(4, (n,), generator=g).tolist()
        flips = (torch.rand(n, generator=g) < 0.5).tolist()
        places = torch.rand(n, 2, generator=g)
        lo, hi = strength
        # drawn only when asked for, so the default leaves the random stream as it was
        powers = (lo + (hi - lo) * torch.rand(n, generator=g)).tolist() if (lo, hi) != (1.0, 1.0) else [1.0] * n
        for i in range(n):
            ratio, m, cut = (v[pick[i]].to(x.device) for v in (self.ratios, self.masks, self.cuts))
            ratio, m, cut = (torch.rot90(v, turns[i], (-2, -1)) for v in (ratio, m, cut))
            if flips[i]:
                ratio, m, cut = ratio.flip(-1), m.flip(-1), cut.flip(-1)
            ph, pw = min(m.shape[0], h), min(m.shape[1], w)
            # a defect cut to the image keeps its centre part
            oy, ox = (m.shape[0] - ph) // 2, (m.shape[1] - pw) // 2
            ratio, m, cut = ratio[:, oy:oy + ph, ox:ox + pw], m[oy:oy + ph, ox:ox + pw], cut[oy:oy + ph, ox:ox + pw]
            if ratio.shape[0] != c:
                ratio = ratio.mean(0, keepdim=True).expand(c, -1, -1)
            if powers[i] != 1.0:
                ratio = ratio.pow(powers[i])
            t, u = int(places[i, 0] * (h - ph + 1)), int(places[i, 1] * (w - pw + 1))
            region = out[i, :, t:t + ph, u:u + pw]
            changed = (region + _FLOOR) * ratio - _FLOOR
            out[i, :, t:t + ph, u:u + pw] = torch.where(cut[None], changed, region)
            mask[i, t:t + ph, u:u + pw] = m
            pasted[i, t:t + ph, u:u + pw] = cut
        out = torch.where(pasted[:, None], out.clamp(0, 1).mul(255).round().div(255), x)
        return out, mask
