"""The model registry: robust registration, and loading a Detector back.

    info = log_detector(det)                                            # danvae.mlops.packaging
    mv = register_logged_model(info, "danvae")                          # new version, alias "challenger"
    det = load_detector("models:/danvae@champion")                      # or models:/danvae/3, runs:/..., a folder

Aliases, not stages: every new version gets ``challenger``; ``champion`` moves only
through the promotion gate (:mod:`danvae.mlops.gate`).

Registration is safe to rerun: the version for a model URI is found again rather than
duplicated, aliases are set only once the version is READY, and a registry that fails
part-way raises :class:`RegistrationError` with a one-line message. A registered
version's weights are checked against the SHA-256 recorded with it before they load.
"""
from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from danvae.mlops.tracking import TrackingError, configure_tracking, failure_cause, quiet_downloads, tracking_failures

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo

    from danvae.detector import Detector

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_URI_TAG = "danvae.model_uri"
MODEL_SHA256_TAG = "danvae.model_sha256"  # of detector.pt: a scorer checks what it loads
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


class RegistryError(TrackingError):
    """The registry could not do what was asked; the message is one line for people."""


class RegistrationError(RegistryError):
    """Registering a model version failed part-way; rerunning is safe."""


class ModelNotFoundError(RegistryError, FileNotFoundError):
    """No model at the given URI (unknown name, version or alias)."""


class ModelIntegrityError(RegistryError):
    """The model file fetched for a registered version is not the one that was registered."""


class IncompatibleModelError(RegistryError):
    """The model was saved by a danvae whose detector this code cannot load (changed
    architecture or config). Its pyfunc still works in a fresh process, with the code the
    model carries (``mlflow models serve``, or :func:`score_with_model_code`)."""


def registry_client(client: MlflowClient | None = None) -> MlflowClient:
    """``client``, or an MlflowClient on the configured tracking URI."""
    from mlflow import MlflowClient

    if client is None:
        configure_tracking()
        client = MlflowClient()
    return client


def is_missing(exc: BaseException) -> bool:
    """Whether an MLflow error says the model, version or alias does not exist."""
    return getattr(exc, "error_code", None) in _MISSING


# ---- registration ----------------------------------------------------------------------


def _find_version(client, name: str, model_uri: str, run_id: str | None):
    """The newest version of ``name`` registered from ``model_uri`` (None when there is none)."""
    query = f"name='{name}'" + (f" and run_id='{run_id}'" if run_id else "")
    found = [mv for mv in client.search_model_versions(query, max_results=1000)
             if mv.tags.get(MODEL_URI_TAG) == model_uri or mv.source == model_uri]
    usable = [mv for mv in found if mv.status != "FAILED_REGISTRATION"]
    return max(usable, key=lambda mv: int(mv.version)) if usable else None


def _wait_ready(client, name: str, version: str, wait_s: float):
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY":
            return mv
        if mv.status == "FAILED_REGISTRATION":
            raise RegistrationError(f"model '{name}' version {version} failed to register: "
                                    f"{mv.status_message or 'no reason given'}; rerunning the registration is safe")
        if time.monotonic() > deadline:
            raise RegistrationError(f"model '{name}' version {version} was still {mv.status} after {wait_s:g} s; "
                                    f"no alias was set; rerunning the registration is safe")
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def register_version(model_uri: str, name: str, *, run_id: str | None = None, model_id: str | None = None,
                     tags: dict[str, Any] | None = None, alias: str | None = CHALLENGER,
                     client: MlflowClient | None = None, wait_s: float = 300) -> ModelVersion:
    """Register ``model_uri`` (a ``models:/<model id>`` from ``log_detector``, or ``runs:/...``)
    as a version of ``name``, wait until it is READY, then point ``alias`` at it.

    Rerunning with the same ``model_uri`` reuses the version it created (no duplicates).
    Raises :class:`RegistrationError` (one line: what failed, and that rerunning is safe)
    when the registry fails; no alias ever points at a version that is not READY.
    """
    from mlflow.exceptions import MlflowException

    client = registry_client(client)
    step = "creating the registered model"
    try:
        try:
            client.get_registered_model(name)
        except MlflowException as exc:
            if not is_missing(exc):
                raise
            try:
                client.create_registered_model(name, description="DAn-VAE surface anomaly detector")
            except MlflowException as exc2:
                if exc2.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
        step = "looking for an earlier registration of this model"
        mv = _find_version(client, name, model_uri, run_id)
        if mv is None:
            step = "creating the model version"
            if model_id is None and model_uri.startswith("models:/m-"):
                model_id = model_uri[len("models:/"):].split("/", 1)[0]
            all_tags = {MODEL_URI_TAG: model_uri, **{k: str(v) for k, v in (tags or {}).items()}}
            mv = client.create_model_version(name=name, source=model_uri, run_id=run_id, tags=all_tags,
                                             model_id=model_id, await_creation_for=0)
        step = f"waiting for version {mv.version} to be READY"
        mv = _wait_ready(client, name, str(mv.version), wait_s)
        if model_id:
            step = "linking the logged model to its version"
            _link_logged_model(client, model_id, name, str(mv.version))
        if alias:
            step = f"pointing alias '{alias}' at version {mv.version}"
            client.set_registered_model_alias(name, alias, str(mv.version))
        return mv
    except RegistrationError:
        raise
    except tracking_failures() as exc:
        raise RegistrationError(
            f"registering {model_uri} as model '{name}' failed while {step}: {failure_cause(exc)}; "
            f"no alias points at an incomplete version and rerunning the registration is safe"
        ) from exc


def register_logged_model(info: ModelInfo, name: str, *, alias: str | None = CHALLENGER, wait_s: float = 300
                          ) -> ModelVersion:
    """Register what :func:`~danvae.mlops.packaging.log_detector` logged (its ``ModelInfo``) as a
    version of ``name``, with the weights' SHA-256 as :data:`MODEL_SHA256_TAG`; the ModelVersion."""
    sha256 = info.danvae_model_sha256  # type: ignore[attr-defined]  # set on the ModelInfo by log_detector
    return register_version(info.model_uri, name, run_id=info.run_id, model_id=getattr(info, "model_id", None),
                            tags={MODEL_SHA256_TAG: sha256}, alias=alias, wait_s=wait_s)


def _link_logged_model(client, model_id: str, name: str, version: str) -> None:
    """Record the version on the logged model (as mlflow.register_model does), once."""
    import json

    from mlflow.exceptions import MlflowException

    key = "mlflow.modelVersions"
    try:
        model = client.get_logged_model(model_id)
    except MlflowException as exc:
        if is_missing(exc):
            return
        raise
    links = json.loads(model.tags.get(key) or "[]")
    entry = {"name": name, "version": version}
    if entry not in links:
        client.set_logged_model_tags(model_id, {key: json.dumps([*links, entry])})


# ---- loading ---------------------------------------------------------------------------------


def _detector_dir(model_dir: Path) -> Path:
    from danvae.mlops.packaging import DETECTOR_ARTIFACT

    candidate = model_dir / "artifacts" / DETECTOR_ARTIFACT
    if not candidate.is_dir():
        raise ModelNotFoundError(f"{model_dir} is an MLflow model without a DAn-VAE detector (no artifacts/"
                                 f"{DETECTOR_ARTIFACT}/): log it with danvae.mlops.packaging.log_detector")
    return candidate


def _load_saved(path: Path, uri: str, device: str, mlflow_model: bool = True):
    from danvae.detector import Detector
    from danvae.model_file import CorruptModelFileError, UnsafeModelFileError

    try:
        return Detector.load(path, device=device)
    except (FileNotFoundError, UnsafeModelFileError, CorruptModelFileError):
        raise
    except Exception as exc:  # noqa: BLE001 - a state dict or config this code does not know
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        hint = ("its pyfunc still runs with its own code: mlflow models serve, or "
                "danvae.mlops.registry.score_with_model_code" if mlflow_model else "retrain it with this code")
        raise IncompatibleModelError(
            f"{uri} was saved by a danvae this code cannot load ({type(exc).__name__}: {first}); {hint}"
        ) from exc


def registered_version(uri: str, client: MlflowClient | None = None) -> ModelVersion | None:
    """The registry entry (an MLflow ModelVersion) behind ``models:/name@alias`` or
    ``models:/name/N``; None for any other kind of URI."""
    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if not m:
        return None
    client = registry_client(client)
    try:
        return client.get_model_version_by_alias(m[1], m[2]) if m[2] else client.get_model_version(m[1], m[3])
    except tracking_failures() as exc:
        if is_missing(exc):
            raise ModelNotFoundError(f"no registered model at {uri}: {failure_cause(exc)}") from exc
        raise RegistryError(f"could not read the registry entry of {uri}: {failure_cause(exc)}") from exc


def _verify_registered_file(uri: str, detector_dir: Path) -> None:
    """For ``models:/name@alias`` and ``models:/name/N``: the fetched weights must hash to the
    version's :data:`MODEL_SHA256_TAG` (versions registered without one are not checked)."""
    mv = registered_version(uri)
    if mv is None:
        return
    from danvae.mlops.packaging import model_file_sha256

    want = (mv.tags or {}).get(MODEL_SHA256_TAG)
    if want and model_file_sha256(detector_dir) != want:
        raise ModelIntegrityError(f"{uri} (version {mv.version}): the fetched model file does not match the "
                                  f"SHA-256 registered with it; it was changed after registration and is not loaded")


def load_detector(uri: str | Path, device: str = "cpu") -> Detector:
    """A :class:`~danvae.detector.Detector` from ``models:/name@alias``, ``models:/name/3``,
    ``models:/<model id>``, ``runs:/<run id>/model``, an MLflow model folder, or a folder
    written by ``danvae train`` / ``Detector.save``.

    Raises :class:`ModelNotFoundError` (a FileNotFoundError) for an unknown model or alias,
    :class:`IncompatibleModelError` when this code cannot load what an older danvae saved,
    and :class:`RegistryError` when the registry cannot be reached."""
    from mlflow.exceptions import MlflowException

    text = str(uri)
    local = Path(text)
    if ":/" not in text or local.exists():
        if (local / "MLmodel").is_file():
            return _load_saved(_detector_dir(local), text, device)
        return _load_saved(local, text, device, mlflow_model=False)
    configure_tracking()
    import mlflow

    with tempfile.TemporaryDirectory(prefix="danvae-load-") as tmp, quiet_downloads():
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=tmp))
        except MlflowException as exc:
            if is_missing(exc):
                raise ModelNotFoundError(f"no model at {text}: {failure_cause(exc)}") from exc
            raise RegistryError(f"could not fetch {text}: {failure_cause(exc)}") from exc
        except tracking_failures() as exc:
            raise RegistryError(f"could not fetch {text}: {failure_cause(exc)}") from exc
        if not (path / "MLmodel").is_file():
            raise ModelNotFoundError(f"{text} is not an MLflow model (no MLmodel file)")
        _verify_registered_file(text, _detector_dir(path))
        return _load_saved(_detector_dir(path), text, device)


# The model's pyfunc in a fresh interpreter that cannot see this checkout's danvae: the code
# the model carries (code/danvae) is what runs.
_OWN_CODE_SCRIPT = """
import sys
root = sys.argv[4]
sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]
sys.path[:] = [p for p in sys.path if p not in ('', root)]
import numpy as np, mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(np.load(sys.argv[2])).to_csv(sys.argv[3], index=False)
"""


def score_with_model_code(model_uri: str, images: Any, timeout_s: float = 900) -> pd.DataFrame:
    """The pyfunc's output table for ``images``, computed in a fresh process with the code the
    model carries: for models saved by a danvae this checkout can no longer load."""
    import os
    import subprocess
    import sys

    import mlflow

    from danvae.images import fit_to
    from danvae.mlops.tracking import project_root

    configure_tracking()
    if isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.dtype == object):
        meta = (mlflow.models.get_model_info(model_uri).metadata or {}).get("danvae", {})
        size, channels = int(meta["image_size"]), int(meta["channels"])
        images = np.concatenate([fit_to(np.asarray(a)[None], size, channels) for a in images])
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
           "MLFLOW_REGISTRY_URI": mlflow.get_registry_uri(), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("PYTHONPATH", None)
    with tempfile.TemporaryDirectory(prefix="danvae-own-code-") as tmp:
        np.save(Path(tmp) / "images.npy", np.ascontiguousarray(images))
        done = subprocess.run([sys.executable, "-c", _OWN_CODE_SCRIPT, model_uri, str(Path(tmp) / "images.npy"),
                               str(Path(tmp) / "scores.csv"), str(project_root())],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RegistryError(f"scoring {model_uri} with its own code failed: {last[:240]}")
        return pd.read_csv(Path(tmp) / "scores.csv")
