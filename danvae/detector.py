"""A detector a notebook user can hold: fit on images, score, predict, save, load.

    det = Detector("danvae", image_size=64).fit(images, is_anomaly)   # images N×H×W×C uint8
    det.decision_function(new_images)    # the decision score, higher = more anomalous
    det.predict(new_images)              # 1 where that score >= det.threshold_, else 0
    det.predict_proba(new_images)        # N×2: [normal, anomalous], 0.5 at the threshold
    det.save("runs/a"); Detector.load("runs/a")

The estimator API follows PyOD's conventions (not scikit-learn's outlier detectors, whose
``score_samples`` is higher for more normal samples): ``decision_function`` and its alias
``score_samples`` rise with abnormality, ``predict`` returns 0 (normal) / 1 (anomalous),
``threshold_`` is the calibrated threshold, and ``get_params`` / ``set_params`` make
``sklearn.base.clone`` work.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pandas as pd
import torch

from danvae.config import ModelConfig, ScoreConfig, TrainConfig
from danvae.data.nuisance import BRIGHTNESS, NuisanceError
from danvae.holdout import ValidationAUROC, holdout_split, relit_copies, with_synthetic_defects
from danvae.images import brightness, fit_to
from danvae.model_file import load_weights
from danvae.models import AnomalyVAE, build_model
from danvae.scoring import (brightness_adjusted, calibrate_threshold, choose_score_kind, default_kind,
                            fit_brightness_spread, fit_brightness_trend, fit_fusion, fuse, heatmap_kind, image_batches,
                            score_images, to_uint8)
from danvae.train import Trainer, TrainingData

DETECTOR_FILE = "detector.pt"


class Detector:
    """DAn-VAE (or a baseline) with its calibrated threshold and chosen score kind."""

    def __init__(self, model: ModelConfig | str = "danvae", *, image_size: int = 64, channels: int = 3,
                 train: TrainConfig | None = None, score: ScoreConfig | None = None, nuisance: str = BRIGHTNESS):
        self._params = {"model": model, "image_size": image_size, "channels": channels, "train": train,
                        "score": score, "nuisance": nuisance}
        self.model_config = ModelConfig(name=model) if isinstance(model, str) else model
        self.train_config = train or TrainConfig()
        self.score_config = score or ScoreConfig()
        self.image_size = image_size
        self.channels = channels
        self.nuisance = nuisance  # what y is: "brightness" (measured on the pixels) or a per-image column's name
        self.nuisance_range: tuple[float, float] | None = None  # a column's training min and max; y = scaled to [0, 1]
        self.model: AnomalyVAE | None = None
        self.score_kind: str | None = None
        self.threshold: float | None = None
        self.threshold_method: str | None = None
        self.val_aurocs: dict[str, float] = {}
        self.val_auroc_interval: tuple[float, float] | None = None
        self.kind_choice: str | None = None
        self.fusion: dict[str, list[float]] | None = None
        self.brightness_trend: list[float] | None = None
        self.brightness_spread: list[float] | None = None
        self.history: list[dict[str, float]] = []
        self.score_range: tuple[float, float] | None = None  # of the validation images' decision scores
        self.best_epoch: int | None = None
        self.epoch_choice: str | None = None  # what chose the kept epoch (keep_best)
        self.resumed_from_epoch = 0  # the epoch fit() resumed from (0: from the start)

    # ---- fitting -----------------------------------------------------------------
    def fit(self, images: np.ndarray, is_anomaly: np.ndarray | None = None, *, run_dir: str | Path | None = None,
            val_images: np.ndarray | None = None, val_is_anomaly: np.ndarray | None = None,
            checkpoint_dir: str | Path | None = None, progress: bool | None = None,
            on_epoch_end: Callable[[int, dict[str, float]], dict[str, float] | None] | None = None,
            masks: np.ndarray | None = None, has_mask: np.ndarray | None = None,
            nuisance: np.ndarray | None = None, val_nuisance: np.ndarray | None = None) -> "Detector":
        """Train on ``images`` (labelled anomalies marked in ``is_anomaly``, their defect pixels
        in ``masks`` N×S×S where ``has_mask``), holding out a validation share to choose the
        score kind and calibrate the threshold (or using ``val_images`` / ``val_is_anomaly``
        when given). Checkpoints go to ``checkpoint_dir`` (default ``run_dir``); a run finds
        its last checkpoint there and resumes. ``nuisance`` / ``val_nuisance``: the factor's value
        per image, needed when the detector's ``nuisance`` is a column rather than brightness."""
        images = fit_to(images, self.image_size, self.channels)
        if self.nuisance != BRIGHTNESS:
            values = self._column_values(images, nuisance)
            self.nuisance_range = (float(values.min()), float(values.max()))
        is_anomaly = np.zeros(len(images), bool) if is_anomaly is None else np.asarray(is_anomaly, bool)
        if len(images) != len(is_anomaly):
            raise ValueError(f"{len(images)} images but {len(is_anomaly)} labels")
        if masks is not None:
            masks = np.asarray(masks, bool)
            if masks.shape != (len(images), self.image_size, self.image_size):
                raise ValueError(f"masks must be N×{self.image_size}×{self.image_size} like the images, got {masks.shape}")
            has_mask = np.ones(len(images), bool) if has_mask is None else np.asarray(has_mask, bool)
        if int((~is_anomaly).sum()) < 2:
            raise ValueError("at least two normal images are needed to train and calibrate")
        if val_images is None:
            tr, va = holdout_split(is_anomaly, self.score_config.val_share, self.train_config.seed)
            if nuisance is not None:
                nuisance, val_nuisance = np.asarray(nuisance)[tr], np.asarray(nuisance)[va]
            images, val_images = images[tr], images[va]
            is_anomaly, val_labels = is_anomaly[tr], is_anomaly[va]
            if masks is not None and has_mask is not None:  # has_mask is set wherever masks is
                masks, has_mask = masks[tr], has_mask[tr]
        else:
            val_images = fit_to(val_images, self.image_size, self.channels)
            val_labels = np.zeros(len(val_images), bool) if val_is_anomaly is None else np.asarray(val_is_anomaly, bool)
        if len(val_images) == 0:
            raise ValueError("no validation images to calibrate the threshold on")
        data = TrainingData.from_arrays(images, self._y(images, nuisance), is_anomaly, self.train_config.sup_ratio,
                                        self.train_config.seed, masks=masks, has_mask=has_mask,
                                        y_measured=self.nuisance == BRIGHTNESS)
        torch.manual_seed(self.train_config.seed)
        self.model = build_model(self.model_config, self.channels, self.image_size)
        val_y = self._y(val_images, val_nuisance)
        watched, watched_labels, watched_y = val_images, val_labels, val_y
        synthetic = self.train_config.synthetic
        self.epoch_choice = "validation" if val_labels.any() else "last epoch: validation holds no anomaly"
        if not val_labels.any() and synthetic.validation_defects and synthetic.families:
            watched, watched_labels = with_synthetic_defects(val_images, synthetic, self.train_config.seed)
            watched_y = self._y(watched, None if val_nuisance is None else np.concatenate([val_nuisance] * 2))
            self.epoch_choice = "validation normals with synthetic defects (validation holds no anomaly)"
        if not self.train_config.keep_best:
            self.epoch_choice = "last epoch (train.keep_best: false)"
        track = ValidationAUROC(self.model, watched, watched_labels, watched_y, self.train_config,
                                self.score_config.batch_size, then=on_epoch_end)
        trainer = Trainer(self.model, self.train_config, checkpoint_dir or run_dir, progress=progress, on_epoch_end=track)
        self.history = trainer.fit(data)
        self.best_epoch = trainer.best_epoch
        self.resumed_from_epoch = trainer.start_epoch  # 0: trained from the first epoch
        if not trainer.world.is_main:  # distributed training: rank 0 calibrates and saves the detector
            return self
        self.calibrate(val_images, val_labels, nuisance=val_nuisance)
        if run_dir is not None:
            self.save(run_dir)
        return self

    def calibrate(self, images: np.ndarray, is_anomaly: np.ndarray, nuisance: np.ndarray | None = None
                  ) -> "Detector":
        """Choose the score kind and the threshold on held-out images."""
        is_anomaly = np.asarray(is_anomaly, bool)
        model = self._require_fitted()
        self.fusion = None
        table = self.score_table(images, with_decision=False, nuisance=nuisance)
        factor = self._trend_column
        self.fusion = fit_fusion(table[~is_anomaly])
        table["fused"] = fuse(table, self.fusion)
        cfg = self.score_config
        choice = choose_score_kind(table, is_anomaly, default_kind(model), cfg.min_val_anomalies, cfg.choice_confidence,
                                   seed=self.train_config.seed)
        self.val_aurocs, self.val_auroc_interval = choice.aurocs, choice.interval
        self.score_kind = choice.kind if cfg.kind == "auto" else cfg.kind
        self.kind_choice = choice.how if cfg.kind == "auto" else "score.kind in the configuration"
        self.brightness_trend = self.brightness_spread = None
        if self.score_config.brightness_adjust and int((~is_anomaly).sum()) >= 10:
            normal = table[~is_anomaly]
            if self.nuisance == BRIGHTNESS and self.score_config.trend_relit_copies:
                relit = relit_copies(fit_to(images, self.image_size, self.channels)[~is_anomaly],
                                     self.train_config.lighting, self.train_config.seed,
                                     self.score_config.trend_relit_copies)
                normal = pd.concat([normal, self.score_table(relit, with_decision=False)], ignore_index=True)
            level = self._scaled(normal[factor].to_numpy(dtype=np.float64))
            self.brightness_trend = fit_brightness_trend(normal[self.score_kind], level)
            residual = brightness_adjusted(normal[self.score_kind], level, self.brightness_trend)
            spread = fit_brightness_spread(residual, level)
            if np.polyval(spread, 0.5) > 0:
                self.brightness_spread = spread
        decision = self._decision_score(table)
        self.threshold, self.threshold_method = calibrate_threshold(
            decision, is_anomaly, self.score_config.normal_quantile, self.score_config.max_val_fpr)
        finite = decision[np.isfinite(decision)]
        self.score_range = (float(finite.min()), float(finite.max())) if len(finite) else None
        return self

    def normalized_scores(self, scores: np.ndarray) -> np.ndarray:
        """Decision scores mapped to [0, 1] with the threshold at 0.5 (anomalib's convention): shifted
        by the threshold and scaled by the spread of the validation images' scores, then clipped.
        NaN for a model saved before the spread was recorded."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.score_range is None or self.threshold is None:
            return np.full(scores.shape, np.nan)
        low, high = self.score_range
        return np.clip((scores - self.threshold) / max(high - low, 1e-12) + 0.5, 0.0, 1.0)

    # ---- scoring -----------------------------------------------------------------
    @property
    def _trend_column(self) -> str:
        """The score table's column the normal-score trend is fitted over: the nuisance factor."""
        return BRIGHTNESS if self.nuisance == BRIGHTNESS else "nuisance"

    def _decision_score(self, table: pd.DataFrame) -> np.ndarray:
        """The chosen score kind, less its normal-image trend over the nuisance when one was fitted
        (``brightness_trend`` keeps its name for saved models; it is over the nuisance factor)."""
        factor = table[self._trend_column].to_numpy(dtype=np.float64)
        return brightness_adjusted(table[self.score_kind].to_numpy(dtype=np.float64), self._scaled(factor),
                                   self.brightness_trend, self.brightness_spread)

    def _column_values(self, images: np.ndarray, nuisance: np.ndarray | None) -> np.ndarray:
        if nuisance is None:
            raise NuisanceError(f"this detector's nuisance factor is '{self.nuisance}', a per-image value: pass "
                                f"nuisance= with one value per image (or read them with danvae.data.nuisance)")
        values = np.asarray(nuisance, dtype=np.float64).reshape(-1)
        if len(values) != len(images):
            raise ValueError(f"{len(images)} images but {len(values)} nuisance values")
        if not np.isfinite(values).all():
            raise NuisanceError(f"nuisance '{self.nuisance}' has values that are not finite numbers")
        return values

    def _scaled(self, values: np.ndarray) -> np.ndarray:
        """A column's values mapped to [0, 1] by the training range (brightness is already there)."""
        if self.nuisance == BRIGHTNESS or self.nuisance_range is None:
            return values
        low, high = self.nuisance_range
        return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)

    def _factors(self, images: np.ndarray, nuisance: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Each image's measured brightness, and its recorded factor (None for a brightness model)."""
        measured = brightness(images) if len(images) else np.zeros(0)
        return measured, None if self.nuisance == BRIGHTNESS else self._column_values(images, nuisance)

    def _label(self, measured: np.ndarray, recorded: np.ndarray | None) -> np.ndarray:
        """The model's nuisance label ``y`` per image, in [0, 1]."""
        return measured if recorded is None else self._scaled(recorded)

    def _y(self, images: np.ndarray, nuisance: np.ndarray | None) -> np.ndarray:
        return self._label(*self._factors(images, nuisance))

    def _require_fitted(self) -> AnomalyVAE:
        if self.model is None:
            raise RuntimeError("this Detector is not fitted yet: call fit() or Detector.load()")
        return self.model

    @overload
    def score_table(self, images: np.ndarray, with_decision: bool = ..., heatmaps: Literal[False] = ...,
                    progress: bool = ..., nuisance: np.ndarray | None = ...) -> pd.DataFrame: ...

    @overload
    def score_table(self, images: np.ndarray, with_decision: bool = ..., *, heatmaps: Literal[True],
                    progress: bool = ..., nuisance: np.ndarray | None = ...) -> tuple[pd.DataFrame, np.ndarray]: ...

    def score_table(self, images: np.ndarray, with_decision: bool = True, heatmaps: bool = False,
                    progress: bool = False, nuisance: np.ndarray | None = None
                    ) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
        """Brightness (and the ``nuisance`` column when the factor is not brightness), every score
        kind, and (once calibrated) ``score`` and ``is_anomaly`` per image; ``progress``: a bar on stderr."""
        model = self._require_fitted()
        images = fit_to(images, self.image_size, self.channels)
        measured, recorded = self._factors(images, nuisance)
        y = self._label(measured, recorded)
        map_kind = heatmap_kind(self.score_kind or default_kind(model), model)
        table, maps = score_images(model, images, y, self.score_config.batch_size, keep_heatmaps=heatmaps,
                                   heatmap_kind=map_kind, progress=progress)
        table["fused"] = fuse(table, self.fusion)
        table.insert(0, "brightness", measured)
        if recorded is not None:
            table.insert(1, "nuisance", recorded)
        if with_decision and self.score_kind is not None:
            at = table.columns.get_loc(self._trend_column) + 1
            table.insert(at, "score", self._decision_score(table))
            table.insert(at + 1, "is_anomaly", table["score"] >= self.threshold)
            table.insert(at + 2, "normalized_score", self.normalized_scores(table["score"].to_numpy()))
        return (table, maps) if heatmaps else table

    def decision_function(self, images: np.ndarray, nuisance: np.ndarray | None = None) -> np.ndarray:
        """The decision score per image: higher = more anomalous (PyOD's convention)."""
        return self.score_table(images, nuisance=nuisance)["score"].to_numpy()

    def score_samples(self, images: np.ndarray, nuisance: np.ndarray | None = None) -> np.ndarray:
        """The same as :meth:`decision_function` (higher = more anomalous)."""
        return self.decision_function(images, nuisance)

    def predict(self, images: np.ndarray, nuisance: np.ndarray | None = None) -> np.ndarray:
        """1 where an image is called anomalous at the calibrated threshold, else 0 (int)."""
        return self.score_table(images, nuisance=nuisance)["is_anomaly"].to_numpy().astype(int)

    def predict_proba(self, images: np.ndarray, nuisance: np.ndarray | None = None) -> np.ndarray:
        """N×2 [normal, anomalous]: the score normalised to [0, 1] with the threshold at 0.5
        (see :meth:`normalized_scores`); not a calibrated probability."""
        p = self.score_table(images, nuisance=nuisance)["normalized_score"].to_numpy(dtype=np.float64)
        return np.stack([1.0 - p, p], axis=1)

    @property
    def threshold_(self) -> float:
        """The calibrated threshold on the decision score (scikit-learn's fitted-attribute name)."""
        if self.threshold is None:
            raise AttributeError("this Detector is not fitted yet: it has no threshold_")
        return self.threshold

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments, as given (so ``sklearn.base.clone`` rebuilds an unfitted copy)."""
        return dict(self._params)

    def set_params(self, **params) -> "Detector":
        """Change constructor arguments; unknown names are refused. A fitted detector is unfitted
        by it (its weights belonged to the old settings): fit it again."""
        unknown = sorted(set(params) - set(self._params))
        if unknown:
            raise ValueError(f"Detector has no parameter {', '.join(unknown)}; it has {', '.join(self._params)}")
        Detector.__init__(self, **{**self._params, **params})
        return self

    def heatmaps(self, images: np.ndarray, nuisance: np.ndarray | None = None) -> np.ndarray:
        """The per-pixel map behind the score kind (the anomaly head's for head_max and fused),
        N×H×W at the model's image size."""
        return self.score_table(images, heatmaps=True, nuisance=nuisance)[1]

    @torch.no_grad()
    def latents(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Posterior means per latent part (``z_x``, and ``z_y`` for DAn-VAE), N×dim each."""
        model = self._require_fitted().eval()
        parts: dict[str, list[np.ndarray]] = {}
        for x in self._batches(images):
            for name, mu in model.latent_means(x).items():
                parts.setdefault(name, []).append(mu.float().cpu().numpy())
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}

    @torch.no_grad()
    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """Deterministic reconstructions (from the posterior means), uint8 N×H×W×C at the model's size."""
        model = self._require_fitted().eval()
        out = [to_uint8(model.reconstruct(x)) for x in self._batches(images)]
        return np.concatenate(out) if out else self._empty_images()

    @property
    def has_nuisance_latent(self) -> bool:
        """Whether the model has a ``z_y`` to decode with (:meth:`decode_with_nuisance`)."""
        return self._require_fitted().has_nuisance_latent

    @torch.no_grad()
    def decode_with_nuisance(self, images: np.ndarray, z_y: np.ndarray) -> np.ndarray:
        """Each image decoded with its own ``z_x`` and row i of ``z_y`` (N×dim) in place of its
        own: uint8 N×H×W×C at the model's size (a lighting traversal)."""
        model = self._require_fitted().eval()  # a model without z_y refuses in decode_with_nuisance
        size = self.score_config.batch_size
        device = next(model.parameters()).device
        codes = torch.as_tensor(np.asarray(z_y), dtype=torch.float32)
        out = [to_uint8(model.decode_with_nuisance(x, codes[i * size:(i + 1) * size].to(device)))
               for i, x in enumerate(self._batches(images))]
        return np.concatenate(out) if out else self._empty_images()

    def _batches(self, images: np.ndarray) -> Iterator[torch.Tensor]:
        """``images`` fitted to the model's size, as model-input batches on the model's device."""
        device = next(self._require_fitted().parameters()).device
        return image_batches(fit_to(images, self.image_size, self.channels), self.score_config.batch_size, device)

    def _empty_images(self) -> np.ndarray:
        return np.zeros((0, self.image_size, self.image_size, self.channels), np.uint8)

    # ---- persistence -------------------------------------------------------------
    def metadata(self) -> dict:
        return {
            # the likelihood as resolved, so a file keeps its meaning when the default moves
            "model": {**self.model_config.model_dump(), "likelihood": self.model_config.resolved_likelihood()},
            "train": self.train_config.model_dump(),
            "score": self.score_config.model_dump(), "image_size": self.image_size, "channels": self.channels,
            "score_kind": self.score_kind, "threshold": self.threshold, "threshold_method": self.threshold_method,
            "val_aurocs": self.val_aurocs, "brightness_trend": self.brightness_trend,
            "brightness_spread": self.brightness_spread,
            "val_auroc_interval": self.val_auroc_interval, "kind_choice": self.kind_choice, "fusion": self.fusion,
            "best_epoch": self.best_epoch, "epoch_choice": self.epoch_choice, "score_range": self.score_range,
            "nuisance": self.nuisance, "nuisance_range": self.nuisance_range,
        }

    def save(self, run_dir: str | Path) -> Path:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        model = self._require_fitted()
        meta = self.metadata()
        torch.save({"meta": meta, "state_dict": model.state_dict(), "history": self.history}, run_dir / DETECTOR_FILE)
        (run_dir / "detector.json").write_text(json.dumps(meta, indent=2))
        return run_dir / DETECTOR_FILE

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> "Detector":
        path = Path(run_dir)
        path = path / DETECTOR_FILE if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"no trained model at {path}: train one first (danvae train ... --out DIR)")
        state = load_weights(path, map_location=device)
        meta = state["meta"]
        # a file written before model.decorrelation existed was trained without it (and has no running estimate);
        # one that says "auto" was written before the likelihood was stored resolved, when auto meant calibrated
        model_config = ModelConfig(**{"decorrelation": 0.0, **meta["model"]})
        if model_config.likelihood == "auto":
            model_config = model_config.model_copy(update={"likelihood": "calibrated" if model_config.spatial else "sse"})
        det = cls(model_config, image_size=meta["image_size"], channels=meta["channels"],
                  train=TrainConfig(**meta["train"]), score=ScoreConfig(**meta["score"]),
                  nuisance=meta.get("nuisance", BRIGHTNESS))
        det.nuisance_range = tuple(meta["nuisance_range"]) if meta.get("nuisance_range") else None
        det.model = build_model(det.model_config, det.channels, det.image_size)
        det.model.load_state_dict(state["state_dict"])
        det.model.to(device).eval()
        det.score_kind, det.threshold = meta["score_kind"], meta["threshold"]
        det.threshold_method, det.val_aurocs = meta["threshold_method"], meta["val_aurocs"]
        det.brightness_trend = meta.get("brightness_trend")
        det.brightness_spread = meta.get("brightness_spread")
        det.fusion = meta.get("fusion")
        interval = meta.get("val_auroc_interval")
        det.val_auroc_interval = tuple(interval) if interval else None
        det.kind_choice = meta.get("kind_choice")
        det.best_epoch = meta.get("best_epoch")
        det.epoch_choice = meta.get("epoch_choice")
        det.score_range = tuple(meta["score_range"]) if meta.get("score_range") else None
        det.history = state.get("history", [])
        return det
