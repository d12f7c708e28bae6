"""What the training loop does to a batch before the model sees it: crops, relighting, and
synthetic or transplanted defects pasted onto normal images with their masks."""
from __future__ import annotations

import torch

from danvae.augment import DefectBank, relight, synthesize_defects
from danvae.config import TrainConfig
from danvae.models.base import Batch
from danvae.models.score_maps import image_brightness
from danvae.train.data import TrainingData


class BatchAugmenter:
    """Augments batches as ``cfg`` says; only a model with an anomaly head (``has_head``) is given
    crops and synthetic defects, since only the head learns from their masks."""

    def __init__(self, cfg: TrainConfig, has_head: bool):
        self.cfg = cfg
        self.has_head = has_head
        self.bank: DefectBank | None = None  # labelled defects to transplant onto normals
        self.y_measured = True  # y is the brightness (TrainingData.y_measured), so it is measured anew

    def defect_bank(self, data: TrainingData) -> DefectBank | None:
        """The labelled anomalies' masked defects, when the configuration transplants them."""
        if not self.has_head or data.has_mask is None or data.masks is None or self.cfg.synthetic.transplant == 0:
            return None
        known = torch.nonzero(data.has_mask).flatten()
        bank = DefectBank.from_anomalies(data.images[known].float().div(255.0), data.masks[known],
                                         self.cfg.synthetic.transplant_background,
                                         self.cfg.synthetic.transplant_margin)
        return bank if len(bank) else None

    def crops(self, side: int) -> bool:
        return self.has_head and self.cfg.crop is not None and self.cfg.crop < side

    def _crop_side(self) -> int:
        if self.cfg.crop is None:
            raise RuntimeError("train.crop is not set: there is nothing to crop to")
        return self.cfg.crop

    def crop(self, batch: Batch, top: list[int], left: list[int]) -> Batch:
        c = self._crop_side()
        batch.x = torch.stack([batch.x[i, :, t:t + c, u:u + c] for i, (t, u) in enumerate(zip(top, left))])
        if batch.mask is not None:
            batch.mask = torch.stack([batch.mask[i, t:t + c, u:u + c] for i, (t, u) in enumerate(zip(top, left))])
        if self.y_measured:
            batch.y = image_brightness(batch.x)  # the crop's own brightness: the label is a measurement
        return batch

    def crop_around_defects(self, batch: Batch, gen: torch.Generator) -> Batch:
        """Crops of labelled anomalies that keep the defect's centre well inside."""
        if batch.mask is None:
            raise ValueError("crops around defects need the batch's defect masks")
        c, side = self._crop_side(), batch.x.shape[-1]
        jitter = torch.randint(-(c // 4), c // 4 + 1, (len(batch.x), 2), generator=gen)
        top, left = [], []
        for i, m in enumerate(batch.mask):
            pts = torch.nonzero(m).float()
            cy, cx = pts.mean(dim=0).tolist() if len(pts) else (side / 2, side / 2)
            top.append(int(min(max(cy - c / 2 + int(jitter[i, 0]), 0), side - c)))
            left.append(int(min(max(cx - c / 2 + int(jitter[i, 1]), 0), side - c)))
        return self.crop(batch, top, left)

    def relight_some(self, batch: Batch, gen: torch.Generator, share: float) -> Batch:
        """Relight a ``share`` of the batch; each relit image's brightness label is measured anew
        (a recorded factor, such as an exposure, no longer describes a relit image: its label is dropped)."""
        if share == 0:
            return batch
        light = self.cfg.lighting
        relit = (torch.rand(len(batch.x), generator=gen) < share).to(batch.x.device)
        if relit.any():
            x = batch.x.clone()
            x[relit] = relight(x[relit], gen, light.gain, light.gamma, light.gradient, light.noise)
            if self.y_measured:
                batch.x, batch.y = x, torch.where(relit, image_brightness(x), batch.y)
            else:
                batch.x, batch.y_known = x, batch.y_known & ~relit
        return batch

    def augment_normals(self, batch: Batch, gen: torch.Generator) -> Batch:
        """Relight a share of the normal images and paste synthetic defects on another share;
        the head learns their masks, and (``denoise``) the VAE reconstructs the clean image."""
        cfg = self.cfg
        n, side = len(batch.x), batch.x.shape[-1]
        if self.crops(side):
            c = self._crop_side()
            top = torch.randint(side - c + 1, (n,), generator=gen).tolist()
            left = torch.randint(side - c + 1, (n,), generator=gen).tolist()
            batch = self.crop(batch, top, left)
        batch = self.relight_some(batch, gen, cfg.lighting.share)
        x = clean = batch.x
        mask = torch.zeros(n, *x.shape[-2:], dtype=torch.bool, device=x.device)
        drawn = torch.zeros(n, dtype=torch.bool, device=x.device)  # a transplant's mask was drawn by hand
        bad = (torch.rand(n, generator=gen) < cfg.synthetic.share).to(x.device)
        if bad.any():
            chosen = x[bad]
            damaged, m = synthesize_defects(chosen, gen, cfg.synthetic.families, cfg.synthetic.strength, side)
            real = torch.zeros(len(damaged), dtype=torch.bool, device=x.device)
            if self.bank is not None:
                real = (torch.rand(len(damaged), generator=gen) < cfg.synthetic.transplant).to(x.device)
                if real.any():
                    damaged[real], m[real] = self.bank.paste(chosen[real], gen, cfg.synthetic.transplant_strength)
            x = x.clone()
            x[bad], mask[bad], drawn[bad] = damaged, m, real
        batch.x, batch.mask, batch.drawn = x, mask, drawn
        batch.has_mask = torch.ones(n, dtype=torch.bool, device=x.device)
        batch.target = clean if cfg.synthetic.denoise else None
        return batch
