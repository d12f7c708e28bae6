"""A fitted detector's whole scoring graph as one ONNX file, and a runtime that scores with it.

    export_onnx(detector, "model.onnx")
    onnx_det = OnnxDetector("model.onnx")          # scores on onnxruntime (the .onnx file alone needs neither torch nor danvae)
    table = onnx_det.score_table(images_uint8_nhwc)  # the columns of Detector.score_table

The graph takes uint8 images N×H×W×C at the model's size (any N) and returns, per image,
the brightness, every score kind, the fused score, the decision score (brightness-adjusted as
the detector calibrated it), the decision, the normalised score and the heatmap. Calibration
(threshold, brightness trend, fusion statistics) is baked in, so the file alone decides. The
decision arithmetic runs in float64, as the Detector does it in numpy.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
import pandas as pd
import torch
from torch import nn

from danvae.data.nuisance import BRIGHTNESS
from danvae.images import fit_to
from danvae.models import score_maps as S
from danvae.config import MODEL_SCORE_KINDS
from danvae.models.self_similarity import self_dissimilarity_map
from danvae.scoring import fuse, heatmap_kind

if TYPE_CHECKING:
    from danvae.detector import Detector

INPUT = "images"
# The decision columns first, as Detector.score_table orders them; then the kinds; the map last.
OUTPUTS = ("brightness", "score", "is_anomaly", "normalized_score", *MODEL_SCORE_KINDS, "fused", "heatmap")
OPSET = 18
BATCH = 16  # images per onnxruntime call: the self-dissimilarity step holds B × queries × references distances


class ExportError(ValueError):
    """The detector cannot be exported (not fitted or not calibrated)."""


def _polyval(coefficients: list[float], x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    for c in coefficients:
        out = out * x + c
    return out


class ScoringGraph(nn.Module):
    """What :meth:`Detector.score_table` computes, as one traceable module (float64 after the model)."""

    def __init__(self, detector) -> None:
        super().__init__()
        self.model = detector.model.eval()
        self.kind = detector.score_kind
        self.map_kind = heatmap_kind(detector.score_kind, detector.model)
        self.fusion = detector.fusion or {}
        self.trend, self.spread = detector.brightness_trend, detector.brightness_spread
        self.threshold = float(detector.threshold)
        low, high = detector.score_range if detector.score_range is not None else (0.0, 1.0)
        self.scale = max(high - low, 1e-12)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        # brightness as the Detector measures it on the uint8 image (mean of the max channel), in float64
        level = images.amax(dim=3).double().mean(dim=(1, 2)) / 255.0
        scores, maps = self.model.scores(x, S.image_brightness(x), self_dissimilarity_map(x, whole_batch=True))
        kinds = {k: scores[k].double() for k in MODEL_SCORE_KINDS}
        if self.fusion:
            kinds["fused"] = torch.stack([(kinds[k] - c) / s for k, (c, s) in self.fusion.items()]).mean(dim=0)
        else:
            kinds["fused"] = torch.full_like(level, float("nan"))
        decision = kinds[self.kind]
        if self.trend is not None:
            decision = decision - _polyval(self.trend, level)
            if self.spread is not None:
                floor = 0.1 * max(float(np.polyval(self.spread, 0.5)), 1e-12)
                decision = decision / _polyval(self.spread, level).clamp(min=floor)
        normalized = ((decision - self.threshold) / self.scale + 0.5).clamp(0.0, 1.0)
        heat = maps.get(self.map_kind, maps["recon_max"]).float()
        return (level, decision, decision >= self.threshold, normalized,
                *(kinds[k] for k in (*MODEL_SCORE_KINDS, "fused")), heat)


def export_onnx(detector: Detector, path: str | Path, opset: int = OPSET) -> Path:
    """Write the detector's scoring graph to ``path`` (one self-contained .onnx file) with its
    calibration and settings as metadata; returns the path."""
    import onnx

    if detector.model is None or detector.score_kind is None or detector.threshold is None:
        raise ExportError("only a fitted and calibrated detector can be exported: fit() it, or load a trained one")
    if detector.nuisance != BRIGHTNESS:
        raise ExportError(f"this detector's nuisance factor is the recorded '{detector.nuisance}', an input the "
                          f"ONNX graph does not take: only brightness models are exported (score it with danvae "
                          f"score or the MLflow model)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = detector.model.to("cpu")
    size, channels = detector.image_size, detector.channels
    example = torch.zeros(2, size, size, channels, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # its notes on optional packages (torchvision) are not the user's concern
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(ScoringGraph(detector), (example,), str(path), input_names=[INPUT],
                              output_names=list(OUTPUTS), dynamic_shapes=({0: batch},), opset_version=opset,
                              dynamo=True, external_data=False, verbose=False)
    finally:
        exporter_log.setLevel(level)
    proto = onnx.load(str(path))
    meta = {"danvae.model": model.name, "danvae.score_kind": detector.score_kind,
            "danvae.heatmap_kind": heatmap_kind(detector.score_kind, model), "danvae.threshold": repr(detector.threshold),
            "danvae.image_size": str(size), "danvae.channels": str(channels),
            "danvae.input": f"uint8 N×{size}×{size}×{channels} (RGB or grey, 0–255)",
            "danvae.outputs": json.dumps(list(OUTPUTS))}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


class OnnxDetector:
    """Scores images with an exported graph on onnxruntime: the same table as the Detector's."""

    def __init__(self, path: str | Path, batch_size: int = BATCH) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.image_size, self.channels = int(self.meta["danvae.image_size"]), int(self.meta["danvae.channels"])
        self.score_kind = self.meta["danvae.score_kind"]
        self.threshold_ = float(self.meta["danvae.threshold"])
        self.batch_size = batch_size

    @overload
    def score_table(self, images: np.ndarray, heatmaps: Literal[False] = ...) -> pd.DataFrame: ...

    @overload
    def score_table(self, images: np.ndarray, heatmaps: Literal[True]) -> tuple[pd.DataFrame, np.ndarray]: ...

    def score_table(self, images: np.ndarray, heatmaps: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
        images = fit_to(images, self.image_size, self.channels)
        parts = [self.session.run(None, {INPUT: np.ascontiguousarray(images[i:i + self.batch_size])})
                 for i in range(0, len(images), self.batch_size)]
        columns = {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(OUTPUTS)}
        maps = columns.pop("heatmap")
        table = pd.DataFrame(columns)
        return (table, maps) if heatmaps else table

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        """The decision score per image: higher = more anomalous."""
        return self.score_table(images)["score"].to_numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        """1 where an image is called anomalous, else 0."""
        return self.score_table(images)["is_anomaly"].to_numpy().astype(int)


# Outputs measured in a unit of their own: the decision score and the fused score in normal
# spreads, the normalised score on [0, 1]. Each is judged against at least that unit: a handful
# of normal images can all score near 0 in it, and a float difference divided by so small a
# largest value would fail an exact export.
UNIT_SCALED = frozenset({"score", "fused", "normalized_score"})


def _fused_terms(detector: Detector, table: pd.DataFrame) -> float:
    """The largest size of the fused score's terms, each kind over its spread, before their
    centres cancel: a kind's float difference reaches the fused score in that proportion."""
    if not detector.fusion:
        return 0.0
    uncentred = {k: [0.0, s] for k, (_, s) in detector.fusion.items()}
    return float(np.nanmax(fuse(table[list(uncentred)].abs(), uncentred)))


def parity(detector: Detector, onnx_detector: OnnxDetector, images: np.ndarray) -> float:
    """The largest difference between the two detectors' outputs on ``images``, over every
    numeric column and the heatmap, each relative to that output's largest magnitude (so a
    score near 0 is not judged by its own tiny size), to at least its unit for the outputs of
    ``UNIT_SCALED``, and the fused score to the size of its terms. Decisions must agree (inf if
    not), except for an image whose score lies within that difference of the threshold."""
    ours, maps = onnx_detector.score_table(images, heatmaps=True)
    ref, ref_maps = detector.score_table(images, heatmaps=True)
    pairs = [(ours[c].to_numpy(np.float64), ref[c].to_numpy(np.float64), c) for c in ref.columns if c != "is_anomaly"]
    worst = 0.0
    for a, b, name in [*pairs, (maps.astype(np.float64), ref_maps.astype(np.float64), "heatmap")]:
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return float("inf")
        finite = np.isfinite(b)
        if finite.any():
            scale = max(float(np.abs(b[finite]).max()), 1.0 if name in UNIT_SCALED else 1e-12,
                        _fused_terms(detector, ref) if name == "fused" else 0.0)
            worst = max(worst, float(np.abs(a[finite] - b[finite]).max()) / scale)
    score = ref["score"].to_numpy(np.float64)
    on_the_line = np.abs(score - detector.threshold) <= worst * max(float(np.abs(score).max()), 1e-12)
    differ = ours["is_anomaly"].to_numpy(bool) != ref["is_anomaly"].to_numpy(bool)
    return float("inf") if (differ & ~on_the_line).any() else worst
