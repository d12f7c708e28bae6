"""The training loop: one epoch's batches, the optimizer step, the kept best epoch, and the
checkpoint written after every epoch (resume continues exactly where it stopped)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from danvae.config import TrainConfig
from danvae.distributed import barrier, join, sum_over_ranks
from danvae.files import atomic_write
from danvae.model_file import CorruptModelFileError, UnsafeModelFileError, load_weights
from danvae.models.base import AnomalyVAE, Batch, LossWeights
from danvae.train.augmentation import BatchAugmenter
from danvae.train.checkpoints import check_fits
from danvae.train.data import TrainingData
from danvae.train.schedule import anomaly_passes, interleave, learning_rate, loss_weights, selection_start

log = logging.getLogger(__name__)

LOSS_TERMS = ("total", "recon", "kl_x", "kl_y", "aux", "head", "adversary", "leak")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DeviceUnavailable(ValueError):
    """The configured device does not exist on this host: rerunning will not help."""


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DeviceUnavailable("train.device is 'cuda' but CUDA is not available here; use 'auto' or 'cpu'")
        return torch.device("cuda")
    return torch.device("cpu")



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


def _weight_average(model: AnomalyVAE, cfg: TrainConfig) -> AveragedModel | None:
    """An exponential moving average of the weights per step (``ema_decay``), or the plain mean
    of the weights at the end of each epoch keep_best may choose from (``swa``); buffers (the
    likelihood's variance) are averaged with them."""
    if cfg.ema_decay:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    if cfg.swa:
        return AveragedModel(model, use_buffers=True)
    return None


def _optimizer(model: AnomalyVAE, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam; with ``head_weight_decay``, AdamW that decays the anomaly head's weights only."""
    if not cfg.head_weight_decay or model.head is None:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    named = list(model.named_parameters())
    head = [p for name, p in named if name.startswith(("head.", "extra_heads."))]
    rest = [p for name, p in named if not name.startswith(("head.", "extra_heads."))]
    return torch.optim.AdamW([{"params": head, "weight_decay": cfg.head_weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)


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
        self.optimizer = _optimizer(self.model, cfg)
        self.run_dir = Path(run_dir) if run_dir else None
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self.best_epoch: int | None = None  # 1-based epoch whose weights were kept (keep_best)
        self._best: dict | None = None  # the best epoch's state when there is no run folder
        self.augmenter = BatchAugmenter(cfg, has_head=model.head is not None)
        self._average = _weight_average(self.model, cfg)  # the weights that are validated, kept and shipped
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
            if data.masks is not None and data.has_mask is not None:  # from_arrays sets both or neither
                batch.mask, batch.has_mask = data.masks[idx].to(dev), data.has_mask[idx].to(dev)
            else:
                batch.mask = torch.zeros(len(idx), *x.shape[-2:], dtype=torch.bool, device=dev)
                batch.has_mask = torch.zeros(len(idx), dtype=torch.bool, device=dev)
            batch.drawn = batch.anomaly & batch.has_mask  # a labelled anomaly's mask was drawn by hand
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
        if self._average is not None and self.cfg.ema_decay:
            self._average.update_parameters(self.model)
        zero = torch.zeros((), device=self.device)
        return torch.stack([terms.get(k, zero).detach().float() for k in LOSS_TERMS]) * len(batch.x)

    def run_epoch(self, data: TrainingData, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        self.augmenter.y_measured = data.y_measured
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
        anomaly_batches = self._anomaly_batches(data, epoch, order_gen)  # lazy: "phase" keeps its draw order

        def normal_step(idx: torch.Tensor) -> None:
            nonlocal sums, seen
            batch = self._batch(data, idx)
            if augment:
                batch = self.augmenter.augment_normals(batch, gen)
            sums += self._step(batch, weights, epoch)
            seen += len(idx)

        def anomaly_step(idx: torch.Tensor, around: bool) -> None:
            batch = self._batch(data, idx)
            batch = self.augmenter.crop_around_defects(batch, gen) if around else batch
            if cfg.anomaly_recon == "outside_mask" and batch.mask is not None and batch.has_mask is not None:
                batch.unknown = batch.mask & batch.has_mask[:, None, None]
            with frozen(self.model.decoder):
                self._step(self.augmenter.relight_some(batch, gen, cfg.lighting.anomaly_share), weights, epoch)

        normals = torch.nonzero(~data.anomaly).flatten()
        if cfg.anomaly_steps == "phase":
            for idx, around in anomaly_batches:
                anomaly_step(idx, around)
            for idx in self._local_batches(normals[torch.randperm(len(normals), generator=order_gen)]):
                normal_step(idx)
        else:
            pending = list(anomaly_batches)
            normal_batches = self._local_batches(normals[torch.randperm(len(normals), generator=order_gen)])
            for idx, crop_flag in interleave(pending, normal_batches):
                if crop_flag is None:
                    normal_step(idx)
                else:
                    anomaly_step(idx, crop_flag)
        sums = sum_over_ranks(sums, world)
        seen = int(sum_over_ranks(torch.tensor([float(seen)], device=self.device), world).item())
        values = (sums / max(seen, 1)).tolist()
        return {"epoch": epoch + 1, **dict(zip(LOSS_TERMS, values)), "beta_x": weights.beta_x, "beta_y": weights.beta_y}

    def _anomaly_batches(self, data: TrainingData, epoch: int, order_gen: torch.Generator
                         ) -> Iterator[tuple[torch.Tensor, bool]]:
        """The epoch's anomaly batches after warm-up, each with whether it trains on crops around
        its defects (anomalies with a known mask) or whole; each pass drawn as it is reached."""
        anomalies = torch.nonzero(data.anomaly).flatten()
        if epoch < self.cfg.warmup_epochs or not self.model.uses_anomalies or not len(anomalies):
            return
        crop = self.augmenter.crops(data.images.shape[-1]) and data.has_mask is not None
        masked = (data.has_mask[anomalies] if crop and data.has_mask is not None
                  else torch.zeros(len(anomalies), dtype=torch.bool))
        for _ in range(anomaly_passes(self.cfg, len(anomalies), len(data.anomaly) - len(anomalies))):
            for members, around in ((anomalies[masked], True), (anomalies[~masked], False)):
                order = members[torch.randperm(len(members), generator=order_gen)]
                for idx in self._local_batches(order):
                    yield idx, around

    def _local_batches(self, order: torch.Tensor) -> list[torch.Tensor]:
        """The epoch's global batches, each cut to this rank's share. Several ranks: a last batch
        too small to give every rank an image is dropped (every rank must take the same steps)."""
        batches = _batches(order, self.cfg.batch_size)
        if self.world.size == 1:
            return batches
        return [self.world.share(b) for b in batches if len(b) >= self.world.size]

    def fit(self, data: TrainingData, resume: bool = True) -> list[dict[str, float]]:
        if int((~data.anomaly).sum()) == 0:
            raise ValueError("training needs at least one normal image")
        self.augmenter.bank = self.augmenter.defect_bank(data)
        if resume:
            self.load_checkpoint()
        main = self.world.is_main
        bar = tqdm(range(self.start_epoch, self.cfg.epochs), initial=self.start_epoch, total=self.cfg.epochs,
                   desc=f"training {self.model.name}", disable=self.progress is False or not main, unit="epoch")
        for epoch in bar:
            record = self.run_epoch(data, epoch)
            if self._average is not None and self.cfg.swa and epoch >= selection_start(self.cfg):
                self._average.update_parameters(self.model)
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
        average = self._shipped_average()
        if main and not self._restore_best() and average is not None:
            self.model.load_state_dict(average.state_dict())
        barrier(self.world)
        return self.history

    @contextlib.contextmanager
    def _averaged_weights(self):
        """Inside the block the model holds the average of its weights (when one is kept and has
        begun), so validation and keep_best see what would be shipped; the training weights come back after."""
        average = self._shipped_average()
        if average is None:
            yield
            return
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(average.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(live)

    @property
    def _average_key(self) -> str:
        return "ema" if self.cfg.ema_decay else "swa"

    def _shipped_average(self) -> torch.nn.Module | None:
        """The average of the weights, once one is kept and has begun; else None."""
        if self._average is None or int(self._average.n_averaged) == 0:
            return None
        return self._average.module

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
        atomic_write(path, lambda tmp: torch.save(state, tmp))

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
        if path is None or self.run_dir is None:
            return
        state = {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "history": self.history, "config": self.cfg.model_dump()}
        if self._average is not None:
            state[self._average_key] = self._average.state_dict()
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        (self.run_dir / "history.json").write_text(json.dumps(self.history, indent=1))

    def load_checkpoint(self) -> bool:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return False
        try:
            state = load_weights(path, map_location=self.device)
            check_fits(state, self.model)
            if self._average is not None and self._average_key not in state:
                raise ValueError(f"checkpoint holds no average of the weights (train.{self._average_key})")
            self.optimizer.load_state_dict(state["optimizer"])
            if self._average is not None:
                self._average.load_state_dict(state[self._average_key])
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
