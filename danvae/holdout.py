"""What a fit holds out and watches: the validation split, the validation AUROC measured at
about ``VAL_POINTS`` epochs of a run (what ``train.keep_best`` chooses the kept epoch by),
for a validation split with no labelled anomaly its normals with synthetic defects to measure
that AUROC on, and relit copies of its normals to fit the score's brightness trend on."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from danvae.augment import relight, synthesize_defects
from danvae.config import LightingConfig, SyntheticDefectConfig, TrainConfig
from danvae.models import AnomalyVAE
from danvae.scoring import default_kind, image_batches, score_images, self_dissimilarities, to_uint8
from danvae.train import selection_start

VAL_POINTS = 20  # validation AUROC is tracked at about this many epochs of a run


def validation_epochs(cfg: TrainConfig) -> set[int]:
    """The epochs (0-based) after which the validation AUROC is measured: about ``VAL_POINTS`` of
    them and always the last. Before keep_best's window a long run measures half as often, as
    those points only draw the learning curve (each pass costs about an epoch)."""
    every = max(1, cfg.epochs // VAL_POINTS)
    start = selection_start(cfg)
    due = {e for e in range(cfg.epochs) if (e + 1) % (every if e >= start or every == 1 else 2 * every) == 0}
    return due | {cfg.epochs - 1}


def holdout_split(is_anomaly: np.ndarray, val_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and validation images, stratified by label when anomalies allow it."""
    idx = np.arange(len(is_anomaly))
    stratify = is_anomaly if int(is_anomaly.sum()) >= 2 and int((~is_anomaly).sum()) >= 2 else None
    train_idx, val_idx = train_test_split(idx, test_size=val_share, random_state=seed, stratify=stratify)
    return np.sort(train_idx), np.sort(val_idx)


def with_synthetic_defects(normals: np.ndarray, cfg: SyntheticDefectConfig, seed: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The validation normals (N×H×W×C uint8) followed by a copy of each with a synthetic defect
    of ``cfg``'s families, and their labels. Drawn once, from ``seed``, so every validated epoch
    is measured on the same defects. What keep_best chooses by when no labelled anomaly is
    held out: it tracks false alarms on unseen normals and the defects the head was taught."""
    x = next(image_batches(normals, len(normals), "cpu"))
    damaged, _ = synthesize_defects(x, torch.Generator().manual_seed(seed), cfg.families, cfg.strength, x.shape[-1])
    copies = to_uint8(damaged)
    return np.concatenate([normals, copies]), np.r_[np.zeros(len(normals), bool), np.ones(len(copies), bool)]


def relit_copies(normals: np.ndarray, cfg: LightingConfig, seed: int, copies: int = 1) -> np.ndarray:
    """``copies`` relit versions of each validation normal (N×H×W×C uint8), relit as training
    relights (gain, gamma, gradient, sensor noise) and drawn once from ``seed``. What the score's
    trend over brightness is fitted on besides the normals themselves: a validation split holds
    few dark images, and a trend fitted on a few dozen of them misjudges the dark end."""
    if copies == 0 or not len(normals):
        return normals[:0]
    x = next(image_batches(normals, len(normals), "cpu"))
    g = torch.Generator().manual_seed(seed)
    return np.concatenate([to_uint8(relight(x, g, cfg.gain, cfg.gamma, cfg.gradient, cfg.noise))
                           for _ in range(copies)])


class ValidationAUROC:
    """The ``on_epoch_end`` callback of a fit: after each due epoch, the validation AUROC of the
    model's default score kind as ``val_auroc`` (what ``keep_best`` reads), after the user's own
    callback's entries. Nothing is measured when validation lacks either label."""

    def __init__(self, model: AnomalyVAE, images: np.ndarray, labels: np.ndarray, y: np.ndarray, cfg: TrainConfig,
                 batch_size: int, then: Callable[[int, dict[str, float]], dict[str, float] | None] | None = None):
        self.model, self.images, self.labels, self.y = model, images, labels, y
        self.batch_size, self.then = batch_size, then
        self.due = validation_epochs(cfg)
        self._dissimilarity: np.ndarray | None = None  # computed once: it does not depend on the model

    def __call__(self, epoch: int, record: dict[str, float]) -> dict[str, float]:
        extra = dict(self.then(epoch, record) or {}) if self.then else {}
        if epoch in self.due and self.labels.any() and (~self.labels).any():
            if self._dissimilarity is None:
                self._dissimilarity = self_dissimilarities(self.images, self.batch_size,
                                                           next(self.model.parameters()).device)
            table, _ = score_images(self.model, self.images, self.y, self.batch_size, dissimilarity=self._dissimilarity)
            extra["val_auroc"] = float(roc_auc_score(self.labels, table[default_kind(self.model)]))
        return extra
