"""The trained detector as an MLflow pyfunc model: log it, and what it answers.

    info = log_detector(det)                        # inside an active run; info.model_uri
    info = log_run_model(run, det)                  # the same, with the run's history and calibration
    model = mlflow.pyfunc.load_model("models:/danvae@champion")
    table = model.predict(images)                   # uint8 N×H×W×C, any H, W; C = 1, 3 or 4

Input: one array N×H×W×C of pixel values, integers 0..255 (``np.uint8``, or any integer
type, or JSON numbers); floating-point values are refused with a 400, never cast (an
image in [0, 1] would otherwise become black). The signature leaves the dtype to this
check, because MLflow's server would cast JSON numbers to a typed signature first.
Any H×W, and C of 1 (gray), 3 (RGB) or 4 (RGBA, alpha dropped): images are resized and converted exactly as training did
(:func:`danvae.images.fit_to`). Images of different sizes can go in one ``predict`` call as
a 1-d object array of H×W×C uint8 arrays (``promote`` and :func:`predict_frame` also take a
plain list).

Output: a DataFrame, one row per image, columns :data:`OUTPUT_COLUMNS`: ``brightness``,
``score`` (the detector's calibrated score kind), ``is_anomaly`` (``score >= threshold``),
``normalized_score`` (in [0, 1], 0.5 at the threshold) and every score kind (:data:`danvae.models.SCORE_KINDS`: ``head_max``, ``recon_max``, ``kl_zx``, ...). The
score kind, threshold and image size are in the MLmodel ``metadata``.

Serving (``mlflow models serve -m models:/danvae@champion --env-manager local``)::

    POST /invocations   Content-Type: application/json
    {"inputs": [[[[r, g, b], ...], ...], ...]}      # nested lists N×H×W×C of 0..255
    -> {"predictions": [{"brightness": .., "score": .., "is_anomaly": false, "kl_zx": .., ...}, ...]}

All images of one request share one H×W×C (JSON gives one dense array); send images of
other sizes in another request. ``{"instances": [...]}`` (a list of images) works too.

A model trained on a recorded nuisance factor (``data.nuisance``, e.g. an exposure) needs it per
image: ``model.predict(images, params={"nuisance": [...]})``, or ``"params": {"nuisance": [...]}``
beside ``"inputs"`` in the request; the MLmodel metadata names the factor.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from danvae.config import SCORE_KINDS, ServeConfig
from danvae.data.nuisance import BRIGHTNESS
from danvae.images import fit_to

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from mlflow.models.model import ModelInfo

    from danvae.detector import Detector
    from danvae.mlops.runs import TrainingRun

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the danvae package, shipped inside each model
MODEL_CODE = PACKAGE_DIR / "mlops" / "pyfunc_model.py"
DETECTOR_ARTIFACT = "detector"
OUTPUT_COLUMNS = ("brightness", "score", "is_anomaly", "normalized_score", *SCORE_KINDS)
TORCH_REQUIREMENT = "torch==2.13.0"  # when torch's version cannot be read; never a range (pulls a CUDA build)
_REQUIRED = ("numpy", "pandas", "pillow", "scikit-learn", "scipy", "pydantic", "tqdm", "mlflow")


def pip_requirements() -> list[str]:
    """What the model needs to load and predict, pinned to the versions installed here: torch
    without its local build tag (``2.13.0+cpu`` → ``torch==2.13.0``, so a GPU host may use its
    own build), the rest as installed (bare names where a version cannot be read). ``danvae``
    itself travels inside the model (``code/danvae``)."""
    try:
        reqs = [f"torch=={importlib_metadata.version('torch').split('+', 1)[0]}"]
    except importlib_metadata.PackageNotFoundError:
        reqs = [TORCH_REQUIREMENT]
    for name in _REQUIRED:
        try:
            reqs.append(f"{name}=={importlib_metadata.version(name)}")
        except importlib_metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def _as_batch(model_input: Any) -> list[np.ndarray] | np.ndarray:
    """A dense N×H×W×C array, or a list of H×W×C arrays of differing sizes."""
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.to_numpy()
    if isinstance(model_input, dict):
        if len(model_input) != 1:
            raise ValueError(f"expected one input tensor of images, got inputs {sorted(model_input)}")
        model_input = next(iter(model_input.values()))
    if isinstance(model_input, (list, tuple)) or (isinstance(model_input, np.ndarray) and model_input.dtype == object):
        items = [np.asarray(a) for a in model_input]
        shapes = {a.shape for a in items}
        if len(shapes) <= 1 and items:
            return np.stack(items)
        return items
    arr = np.asarray(model_input)
    if arr.ndim == 3:  # one image, or a batch of grayscale images without the channel axis
        arr = arr[..., None] if arr.shape[-1] not in (1, 3, 4) else arr[None]
    return arr


def _as_pixels(a: np.ndarray) -> np.ndarray:
    """Pixel values as uint8, refusing anything that is not integers 0..255 (never a silent cast)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == object:  # JSON numbers, as MLflow's server parses them under the open signature
        try:
            a = np.asarray(a.tolist())
        except ValueError as exc:
            raise ValueError(f"pixel values must be numbers in one dense array per image: {exc}") from None
    if a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ValueError(f"pixel values must lie in 0..255, got {a.min()}..{a.max()}")
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        raise ValueError("pixel values must be integers 0..255 (uint8), got floating-point numbers; "
                         "scale an image in [0, 1] by 255 and round it first")
    raise ValueError(f"pixel values must be integers 0..255, got values of type {a.dtype}")


def _check_channels(c: int) -> None:
    if c not in (1, 3, 4):
        raise ValueError(f"images need 1 (gray), 3 (RGB) or 4 (RGBA) channels, got {c}")


def _check_limits(batch: list[np.ndarray] | np.ndarray, max_pixels: int | None, max_batch: int | None) -> None:
    """Refuse, before any decoding or resizing, what would hold a worker's memory hostage."""
    n = len(batch)
    if max_batch is not None and n > max_batch:
        raise ValueError(f"{n} images in one request; the limit is {max_batch} (serve.max_batch)")
    sizes = [batch.shape[1:3]] if isinstance(batch, np.ndarray) and batch.ndim >= 3 else \
        [a.shape[:2] for a in batch if a.ndim >= 2]
    for h, w in sizes:
        if h < 1 or w < 1:
            raise ValueError(f"an image of {h}×{w} pixels has nothing to score")
        if max_pixels is not None and h * w > max_pixels:
            raise ValueError(f"an image of {h}×{w} pixels exceeds the limit of {max_pixels} pixels (serve.max_pixels)")


def model_batch(detector: Detector, model_input: Any, max_pixels: int | None = None, max_batch: int | None = None
                ) -> np.ndarray:
    """The input brought to the detector's N×size×size×channels uint8, as training saw images;
    ``ValueError`` past the limits (``None``: no limit)."""
    batch = _as_batch(model_input)
    _check_limits(batch, max_pixels, max_batch)
    batch = _as_pixels(batch) if isinstance(batch, np.ndarray) else [_as_pixels(a) for a in batch]
    if isinstance(batch, np.ndarray):
        if batch.ndim != 4:
            raise ValueError(f"expected images shaped N×H×W×C, got shape {batch.shape}")
        _check_channels(batch.shape[-1])
        return fit_to(batch, detector.image_size, detector.channels)
    for a in batch:
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3:
            raise ValueError(f"expected each image shaped H×W×C, got shape {a.shape}")
        _check_channels(a.shape[-1])
    parts = [fit_to(a[None] if a.ndim == 3 else a[None, ..., None], detector.image_size, detector.channels)
             for a in batch]
    return np.concatenate(parts) if parts else np.zeros((0, detector.image_size, detector.image_size,
                                                          detector.channels), np.uint8)


def predict_frame(detector: Detector, model_input: Any, max_pixels: int | None = None, max_batch: int | None = None,
                  nuisance: Any = None) -> pd.DataFrame:
    """One row per image: brightness, score, is_anomaly and every score kind (float64 / bool).
    ``nuisance``: one value per image, for a detector trained on a recorded factor."""
    images = model_batch(detector, model_input, max_pixels, max_batch)
    table = detector.score_table(images, nuisance=None if nuisance is None else np.asarray(nuisance, np.float64))
    out = pd.DataFrame({c: table[c].to_numpy(dtype=np.float64) for c in OUTPUT_COLUMNS if c != "is_anomaly"})
    out.insert(2, "is_anomaly", table["is_anomaly"].to_numpy(dtype=bool))
    return out[list(OUTPUT_COLUMNS)]


def signature() -> ModelSignature:
    """Input: one tensor of any shape and dtype, checked by :func:`model_batch` (a typed spec would
    let MLflow's server cast JSON floats to uint8 before the model sees them); output: the score columns."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(object), (-1,))])
    outputs = Schema([ColSpec("boolean" if c == "is_anomaly" else "double", c) for c in OUTPUT_COLUMNS])
    # the per-image nuisance factor of a model trained on a recorded one (data.nuisance); empty otherwise
    params = ParamSchema([ParamSpec("nuisance", "double", [], (-1,))])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def example_images(detector: Detector, n: int = 2, size: int = 24, seed: int = 0) -> np.ndarray:
    """A small uint8 batch (deliberately not the model's image size: it is resized)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(90, 200, size=(n, 1, 1, detector.channels))
    noise = rng.integers(-20, 21, size=(n, size, size, detector.channels))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _staged_package(into: Path) -> Path:
    """A clean copy of the ``danvae`` package (no caches) to ship inside the model."""
    dest = into / "danvae"
    shutil.copytree(PACKAGE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
    return dest


def model_file_sha256(detector_dir: str | Path) -> str:
    """SHA-256 of a saved detector's weights file."""
    from danvae.detector import DETECTOR_FILE

    return hashlib.sha256((Path(detector_dir) / DETECTOR_FILE).read_bytes()).hexdigest()


def log_detector(detector: Detector, name: str = "model", *, input_example: np.ndarray | None = None,
                 limits: dict[str, int] | None = None) -> ModelInfo:
    """Log a fitted, calibrated detector as a pyfunc model in the active run (or, when none is
    active, as a run-less logged model in experiment "danvae", which becomes the active
    experiment); returns MLflow's ``ModelInfo`` (``model_uri`` is ``models:/<model id>``).

    ``limits`` (``max_pixels``, ``max_batch``; default :class:`~danvae.config.ServeConfig`) go
    into the model's ``model_config``: every request past them is refused (HTTP 400).

    ``info.danvae_model_sha256`` is the weights' SHA-256; register the model with
    :func:`danvae.mlops.registry.register_logged_model`, which records it.
    """
    import mlflow

    from danvae.mlops.tracking import DEFAULT_EXPERIMENT, configure_tracking, get_or_create_experiment, quiet_downloads

    if detector.model is None or detector.score_kind is None or detector.threshold is None:
        raise ValueError("log_detector needs a fitted, calibrated Detector (fit() or Detector.load())")
    if mlflow.active_run() is None:  # a run-less logged model: still in our experiment, not in ./mlruns
        configure_tracking()
        mlflow.set_experiment(experiment_id=get_or_create_experiment(DEFAULT_EXPERIMENT))
    images = example_images(detector) if input_example is None else np.asarray(input_example)
    example: Any = images
    if detector.nuisance != BRIGHTNESS:  # such a model needs the factor per image: the example gives it
        middle = float(np.mean(detector.nuisance_range or (0.0, 1.0)))  # the range is set by fit()
        example = (images, {"nuisance": [middle] * len(images)})
    meta = detector.metadata()
    with tempfile.TemporaryDirectory(prefix="danvae-model-") as tmp, quiet_downloads():
        staged = Path(tmp)
        detector.save(staged / DETECTOR_ARTIFACT)
        sha256 = model_file_sha256(staged / DETECTOR_ARTIFACT)
        code = _staged_package(staged / "code")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code / MODEL_CODE.relative_to(PACKAGE_DIR)),
            artifacts={DETECTOR_ARTIFACT: str(staged / DETECTOR_ARTIFACT)},
            code_paths=[str(code)],
            signature=signature(),
            input_example=example,
            pip_requirements=pip_requirements(),
            model_config=limits if limits is not None else ServeConfig().model_dump(),
            metadata={"danvae": {"model": meta["model"]["name"], "image_size": meta["image_size"],
                                 "channels": meta["channels"], "score_kind": meta["score_kind"],
                                 "threshold": meta["threshold"], "threshold_method": meta["threshold_method"],
                                 "nuisance": meta["nuisance"], "output_columns": list(OUTPUT_COLUMNS)}},
        )
    info.danvae_model_sha256 = sha256  # registered as a version tag; scorers verify it
    return info


def log_run_model(run: TrainingRun, detector: Detector, name: str = "model", input_example: np.ndarray | None = None,
                  limits: dict[str, int] | None = None) -> ModelInfo:
    """Log the detector into a :class:`~danvae.mlops.runs.TrainingRun` as a pyfunc, with its
    calibration (score kind, threshold, validation AUROC per kind) and its full history."""
    import mlflow

    run.log_history(detector.history)
    run.log_params({"detector": {"score_kind": detector.score_kind, "threshold_method": detector.threshold_method}})
    run.log_metrics({"threshold": detector.threshold, "val_auroc_by_kind": detector.val_aurocs})
    info = log_detector(detector, name=name, input_example=input_example, limits=limits)
    run.model_info = info
    mlflow.set_tags({"model_uri": info.model_uri})
    return info
