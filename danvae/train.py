"""The training loop: the reference schedule, β warm-up, checkpoints and exact resume.

    data = TrainingData.from_arrays(images, brightness, is_anomaly, sup_ratio=0.5, seed=0)
    history = Trainer(model, TrainConfig(epochs=30), run_dir="runs/a").fit(data)

Schedule: the first ``warmup_epochs`` epochs see normal images only while β_x and β_y
ramp linearly from 0; after that, each epoch first runs the labelled-anomaly batches
with the decoder frozen (anomalies shape the encoders only), then the normal batches.
Each epoch is seeded from (seed, epoch), so a run resumed from its checkpoint
continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from danvae.augment import DefectBank, relight, synthesize_defects
from danvae.config import TrainConfig
from danvae.distributed import barrier, join, sum_over_ranks
from danvae.model_file import CorruptModelFileError, UnsafeModelFileError, load_weights
from danvae.models.base import AnomalyVAE, Batch, LossWeights
from danvae.models.score_maps import image_brightness

log = logging.getLogger(__name__)

LOSS_TERMS = ("total", "recon", "kl_x", "kl_y", "aux", "head", "adversary")
REFERENCE_PIXELS = 3 * 128 * 128
REFERENCE_ALPHA = 3500.0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DeviceUnavailable(ValueError):
    """The configured device does not exist on this host: rerunning will not help."""


@dataclass
class TrainingData:
    """Training images decoded once: uint8 N×C×H×W plus per-image labels."""

    images: torch.Tensor
    y: torch.Tensor
    y_known: torch.Tensor
    anomaly: torch.Tensor
    masks: torch.Tensor | None = None  # N×H×W bool defect masks of labelled anomalies
    has_mask: torch.Tensor | None = None  # N bool: the image's mask is known
    y_measured: bool = True  # y is the image's brightness (crops and relit images are measured anew)

    @classmethod
    def from_arrays(cls, images_nhwc: np.ndarray, y: np.ndarray, anomaly: np.ndarray,
                    sup_ratio: float = 1.0, seed: int = 0, y_known: np.ndarray | None = None,
                    masks: np.ndarray | None = None, has_mask: np.ndarray | None = None,
                    y_measured: bool = True) -> "TrainingData":
        """Pack arrays; ``sup_ratio`` of the images (chosen by seed) keep their nuisance label.
        ``masks`` (N×H×W bool) with ``has_mask`` give the defect pixels of labelled anomalies.
        ``y_measured``: ``y`` is the brightness; False for a recorded factor (exposure, camera)."""
        n = len(images_nhwc)
        if y_known is None:
            rng = np.random.default_rng(seed)
            y_known = np.zeros(n, dtype=bool)
            y_known[rng.permutation(n)[: int(round(sup_ratio * n))]] = True
        images = torch.from_numpy(np.ascontiguousarray(np.asarray(images_nhwc, dtype=np.uint8).transpose(0, 3, 1, 2)))
        anomaly_t = torch.tensor(np.asarray(anomaly), dtype=torch.bool)
        masks_t = has_mask_t = None
        if masks is not None:
            masks_t = torch.from_numpy(np.ascontiguousarray(np.asarray(masks, dtype=bool)))
            known = np.ones(n, bool) if has_mask is None else np.asarray(has_mask, bool)
            has_mask_t = torch.tensor(known, dtype=torch.bool) & anomaly_t
        return cls(images, torch.tensor(np.asarray(y), dtype=torch.float32),
                   torch.tensor(np.asarray(y_known), dtype=torch.bool), anomaly_t, masks_t, has_mask_t, y_measured)

    def __len__(self) -> int:
        return len(self.images)


def _check_fits(state: dict, model: nn.Module) -> None:
    """Refuse (ValueError) a checkpoint whose weights are not exactly this model's, before any is copied."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state["model"].items()}
    if want != got:
        differ = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        raise ValueError(f"weights do not fit this model (first difference: {differ[0]})")
    missing = [k for k in ("epoch", "history", "optimizer") if k not in state]
    if missing:
        raise ValueError(f"checkpoint lacks {', '.join(missing)}")


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DeviceUnavailable("train.device is 'cuda' but CUDA is not available here; use 'auto' or 'cpu'")
        return torch.device("cuda")
    return torch.device("cpu")


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """Linear ramp from 0 at epoch 0 to 1 at ``warmup_epochs`` (0-based epochs)."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, epoch / warmup_epochs)


def default_alpha(channels: int, image_size: int) -> float:
    """The reference α = 3500 was set for 128×128 RGB; scale it with the pixel count,
    since the reconstruction term it balances is a sum over pixels."""
    return REFERENCE_ALPHA * channels * image_size * image_size / REFERENCE_PIXELS


def selection_start(cfg: TrainConfig) -> int:
    """The first epoch (0-based) whose weights ``keep_best`` may keep: the second half, after warm-up."""
    return max(cfg.warmup_epochs, cfg.epochs // 2)


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The epoch's learning rate: constant, or cosine from ``lr`` down to ``lr``/20 at the last epoch."""
    if cfg.lr_schedule == "constant" or cfg.epochs <= 1:
        return cfg.lr
    floor = cfg.lr / 20
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * epoch / (cfg.epochs - 1)))


def loss_weights(cfg: TrainConfig, epoch: int, channels: int, image_size: int) -> LossWeights:
    f = warmup_factor(epoch, cfg.warmup_epochs)
    alpha = cfg.alpha if cfg.alpha is not None else default_alpha(channels, image_size)
    return LossWeights(beta_x=cfg.beta_x * f, beta_y=cfg.beta_y * f, alpha=alpha)


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Parameters of ``module`` get no gradient (and so no optimizer update) inside the block."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(order.split(batch_size)) if len(order) else []


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


class Trainer:
    """Fits an :class:`AnomalyVAE` on :class:`TrainingData`, checkpointing every epoch."""

    def __init__(self, model: AnomalyVAE, cfg: TrainConfig, run_dir: str | Path | None = None,
                 progress: bool | None = None,
                 on_epoch_end: Callable[[int, dict[str, float]], dict[str, float] | None] | None = None):
        self.cfg = cfg
        self.world, self.device = join(pick_device(cfg.device))  # rank 0 of 1 unless torchrun started several
        self.model = model.to(self.device)
        # several processes: DDP averages the gradients; a frozen decoder (anomaly batches) and the
        # parts a batch does not reach leave parameters without gradient, hence find_unused_parameters
        self._ddp = (DistributedDataParallel(self.model, find_unused_parameters=True,
                                             device_ids=[self.device.index] if self.device.type == "cuda" else None)
                     if self.world.size > 1 else None)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.run_dir = Path(run_dir) if run_dir else None
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.y_measured = True  # set from the data each epoch (TrainingData.y_measured)
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self.best_epoch: int | None = None  # 1-based epoch whose weights were kept (keep_best)
        self._best: dict | None = None  # the best epoch's state when there is no run folder
        self._bank: DefectBank | None = None  # labelled defects to transplant onto normals
        self._ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
                     if cfg.ema_decay else None)  # the weights that are validated, kept and shipped
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / "checkpoints" / "last.pt" if self.run_dir else None

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _batch(self, data: TrainingData, idx: torch.Tensor) -> Batch:
        dev = self.device
        x = data.images[idx].to(dev, non_blocking=True).float().div_(255.0)
        batch = Batch(x=x, y=data.y[idx].to(dev), y_known=data.y_known[idx].to(dev), anomaly=data.anomaly[idx].to(dev))
        if self.model.head is not None:
            if data.masks is not None:
                batch.mask, batch.has_mask = data.masks[idx].to(dev), data.has_mask[idx].to(dev)
            else:
                batch.mask = torch.zeros(len(idx), *x.shape[-2:], dtype=torch.bool, device=dev)
                batch.has_mask = torch.zeros(len(idx), dtype=torch.bool, device=dev)
        return batch

    def _crops(self, side: int) -> bool:
        return self.model.head is not None and self.cfg.crop is not None and self.cfg.crop < side

    def _crop(self, batch: Batch, top: list[int], left: list[int]) -> Batch:
        c = self.cfg.crop
        batch.x = torch.stack([batch.x[i, :, t:t + c, u:u + c] for i, (t, u) in enumerate(zip(top, left))])
        if batch.mask is not None:
            batch.mask = torch.stack([batch.mask[i, t:t + c, u:u + c] for i, (t, u) in enumerate(zip(top, left))])
        if self.y_measured:
            batch.y = image_brightness(batch.x)  # the crop's own brightness: the label is a measurement
        return batch

    def _crop_around_defects(self, batch: Batch, gen: torch.Generator) -> Batch:
        """Crops of labelled anomalies that keep the defect's centre well inside."""
        c, side = self.cfg.crop, batch.x.shape[-1]
        jitter = torch.randint(-(c // 4), c // 4 + 1, (len(batch.x), 2), generator=gen)
        top, left = [], []
        for i, m in enumerate(batch.mask):
            pts = torch.nonzero(m).float()
            cy, cx = pts.mean(dim=0).tolist() if len(pts) else (side / 2, side / 2)
            top.append(int(min(max(cy - c / 2 + int(jitter[i, 0]), 0), side - c)))
            left.append(int(min(max(cx - c / 2 + int(jitter[i, 1]), 0), side - c)))
        return self._crop(batch, top, left)

    def _relight(self, batch: Batch, gen: torch.Generator, share: float) -> Batch:
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

    def _augment_normals(self, batch: Batch, gen: torch.Generator) -> Batch:
        """Relight a share of the normal images and paste synthetic defects on another share;
        the head learns their masks, and (``denoise``) the VAE reconstructs the clean image."""
        cfg = self.cfg
        n, side = len(batch.x), batch.x.shape[-1]
        if self._crops(side):
            top = torch.randint(side - cfg.crop + 1, (n,), generator=gen).tolist()
            left = torch.randint(side - cfg.crop + 1, (n,), generator=gen).tolist()
            batch = self._crop(batch, top, left)
        batch = self._relight(batch, gen, cfg.lighting.share)
        x = clean = batch.x
        mask = torch.zeros(n, *x.shape[-2:], dtype=torch.bool, device=x.device)
        bad = (torch.rand(n, generator=gen) < cfg.synthetic.share).to(x.device)
        if bad.any():
            chosen = x[bad]
            damaged, m = synthesize_defects(chosen, gen, cfg.synthetic.families, cfg.synthetic.strength, side)
            if self._bank is not None:
                real = torch.rand(len(damaged), generator=gen) < cfg.synthetic.transplant
                if real.any():
                    real = real.to(x.device)
                    damaged[real], m[real] = self._bank.paste(chosen[real], gen, cfg.synthetic.transplant_strength)
            x = x.clone()
            x[bad], mask[bad] = damaged, m
        batch.x, batch.mask = x, mask
        batch.has_mask = torch.ones(n, dtype=torch.bool, device=x.device)
        batch.target = clean if cfg.synthetic.denoise else None
        return batch

    def _step(self, batch: Batch, weights: LossWeights, epoch: int) -> torch.Tensor:
        with self._autocast():
            terms = self._ddp(batch, weights) if self._ddp is not None else self.model.loss(batch, weights)
        total = terms["total"]
        if not torch.isfinite(total):
            raise TrainingDiverged(
                f"loss became {total.item()} at epoch {epoch + 1}; lower train.lr or check the images "
                f"(the last good checkpoint is kept)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        if self._ema is not None:
            self._ema.update_parameters(self.model)
        zero = torch.zeros((), device=self.device)
        return torch.stack([terms.get(k, zero).detach().float() for k in LOSS_TERMS]) * len(batch.x)

    def run_epoch(self, data: TrainingData, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        self.y_measured = data.y_measured
        seed = _epoch_seed(cfg.seed, epoch)
        world = self.world
        # one process: one stream for the order and the augmentations (as always). Several: the
        # same order on every rank, and each rank's own sampling and augmentation draws.
        torch.manual_seed(seed + world.rank)
        gen = torch.Generator().manual_seed(seed + 7919 * world.rank)
        order_gen = gen if world.size == 1 else torch.Generator().manual_seed(seed)
        weights = loss_weights(cfg, epoch, data.images.shape[1], data.images.shape[-1])
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, epoch)
        augment = self.model.head is not None
        self.model.train()
        sums = torch.zeros(len(LOSS_TERMS), device=self.device)
        seen = 0
        anomalies = torch.nonzero(data.anomaly).flatten()
        normals = torch.nonzero(~data.anomaly).flatten()
        if epoch >= cfg.warmup_epochs and self.model.uses_anomalies and len(anomalies):
            # Anomalies with a known mask train on crops around their defect; the others whole.
            crop = self._crops(data.images.shape[-1]) and data.has_mask is not None
            masked = data.has_mask[anomalies] if crop else torch.zeros(len(anomalies), dtype=torch.bool)
            with frozen(self.model.decoder):
                for _ in range(cfg.anomaly_repeats):
                    for group, around in ((anomalies[masked], True), (anomalies[~masked], False)):
                        order = group[torch.randperm(len(group), generator=order_gen)]
                        for idx in self._local_batches(order):
                            batch = self._batch(data, idx)
                            batch = self._crop_around_defects(batch, gen) if around else batch
                            self._step(self._relight(batch, gen, cfg.lighting.anomaly_share), weights, epoch)
        order = normals[torch.randperm(len(normals), generator=order_gen)]
        for idx in self._local_batches(order):
            batch = self._batch(data, idx)
            if augment:
                batch = self._augment_normals(batch, gen)
            sums += self._step(batch, weights, epoch)
            seen += len(idx)
        sums = sum_over_ranks(sums, world)
        seen = int(sum_over_ranks(torch.tensor([float(seen)], device=self.device), world).item())
        values = (sums / max(seen, 1)).tolist()
        return {"epoch": epoch + 1, **dict(zip(LOSS_TERMS, values)), "beta_x": weights.beta_x, "beta_y": weights.beta_y}

    def _local_batches(self, order: torch.Tensor) -> list[torch.Tensor]:
        """The epoch's global batches, each cut to this rank's share. Several ranks: a last batch
        too small to give every rank an image is dropped (every rank must take the same steps)."""
        batches = _batches(order, self.cfg.batch_size)
        if self.world.size == 1:
            return batches
        return [self.world.share(b) for b in batches if len(b) >= self.world.size]

    def _defect_bank(self, data: TrainingData) -> DefectBank | None:
        if self.model.head is None or data.has_mask is None or self.cfg.synthetic.transplant == 0:
            return None
        known = torch.nonzero(data.has_mask).flatten()
        bank = DefectBank.from_anomalies(data.images[known].float().div(255.0), data.masks[known])
        return bank if len(bank) else None

    def fit(self, data: TrainingData, resume: bool = True) -> list[dict[str, float]]:
        if int((~data.anomaly).sum()) == 0:
            raise ValueError("training needs at least one normal image")
        self._bank = self._defect_bank(data)
        if resume:
            self.load_checkpoint()
        main = self.world.is_main
        bar = tqdm(range(self.start_epoch, self.cfg.epochs), initial=self.start_epoch, total=self.cfg.epochs,
                   desc=f"training {self.model.name}", disable=self.progress is False or not main, unit="epoch")
        for epoch in bar:
            record = self.run_epoch(data, epoch)
            if not main:  # validation, the kept best epoch and the files are rank 0's
                self.history.append(record)
                continue
            with self._averaged_weights():
                if self.on_epoch_end is not None:
                    record.update(self.on_epoch_end(epoch, record) or {})
                self.history.append(record)
                bar.set_postfix(loss=f"{record['total']:.1f}")
                self._keep_if_best(epoch, record)
            self.save_checkpoint(epoch)
        if main and not self._restore_best() and self._ema is not None:
            self.model.load_state_dict(self._ema.module.state_dict())
        barrier(self.world)
        return self.history

    @contextlib.contextmanager
    def _averaged_weights(self):
        """Inside the block the model holds the moving average of its weights (when kept), so
        validation and keep_best see what would be shipped; the training weights come back after."""
        if self._ema is None:
            yield
            return
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self._ema.module.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(live)

    @property
    def best_path(self) -> Path | None:
        return self.run_dir / "checkpoints" / "best.pt" if self.run_dir else None

    def _keep_if_best(self, epoch: int, record: dict[str, float]) -> None:
        """Keep the weights of the epoch with the best validation AUROC in the second half of
        training (and after warm-up): one noisy last epoch does not decide the model, and an
        early epoch whose decoder has not yet learnt lighting is never taken."""
        score = record.get("val_auroc")
        if not self.cfg.keep_best or score is None or epoch < selection_start(self.cfg):
            return
        best = self._best_record()
        if best is not None and best["val_auroc"] >= score:
            return
        state = {"epoch": epoch, "val_auroc": float(score),
                 "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}
        path = self.best_path
        if path is None:
            self._best = state
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def _best_record(self) -> dict | None:
        if self.best_path is None:
            return self._best
        return load_weights(self.best_path, map_location=self.device) if self.best_path.exists() else None

    def _restore_best(self) -> bool:
        best = self._best_record() if self.cfg.keep_best else None
        if best is not None:
            self.model.load_state_dict(best["model"])
            self.best_epoch = best["epoch"] + 1
        return best is not None

    def save_checkpoint(self, epoch: int) -> None:
        path = self.checkpoint_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "history": self.history, "config": self.cfg.model_dump()}
        if self._ema is not None:
            state["ema"] = self._ema.state_dict()
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: an interruption never leaves a half-written checkpoint
        (self.run_dir / "history.json").write_text(json.dumps(self.history, indent=1))

    def load_checkpoint(self) -> bool:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return False
        try:
            state = load_weights(path, map_location=self.device)
            _check_fits(state, self.model)
            if self._ema is not None and "ema" not in state:
                raise ValueError("checkpoint holds no moving average of the weights (train.ema_decay)")
            self.optimizer.load_state_dict(state["optimizer"])
            if self._ema is not None:
                self._ema.load_state_dict(state["ema"])
        except (CorruptModelFileError, UnsafeModelFileError, KeyError, TypeError, ValueError) as exc:
            # a checkpoint that cannot be resumed must not fail every rerun: set it aside, start afresh
            aside = path.with_name(path.name + ".unusable")
            os.replace(path, aside)
            log.warning("checkpoint %s cannot be resumed (%s); moved to %s, training from epoch 1",
                        path, " ".join(str(exc).split())[:200], aside.name)
            return False
        self.model.load_state_dict(state["model"])
        self.history = list(state["history"])
        self.start_epoch = state["epoch"] + 1
        return True
