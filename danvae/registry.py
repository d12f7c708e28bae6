"""The model registry: robust registration, gated promotion by alias, loading a Detector back.

    mv = register_version(info.model_uri, "danvae", run_id=run_id)     # new version, alias "challenger"
    decision = promote(None, "danvae", mv.version, test_images, test_is_anomaly,
                       auroc_tolerance=0.01, dark_tolerance=0.02, validation_passed=True, min_auroc=0.6)
    det = load_detector("models:/danvae@champion")                      # or models:/danvae/3, runs:/..., a folder

Aliases, not stages: every new version gets ``challenger``; ``champion`` moves only when
the gate passes (or on ``force`` with a recorded reason). The gate scores the challenger
and the current champion on the same images and promotes when

* overall AUROC is not worse than the champion's by more than ``auroc_tolerance``,
* AUROC in the darkest brightness quintile is not worse by more than ``dark_tolerance``, and
* the data validation passed;

with no champion yet, the version is promoted when validation passed and its AUROC reaches
``min_auroc``. The challenger version is tagged ``gate.decision``, ``gate.reason``,
``gate.validation_passed``, ``gate.forced`` and ``gate.figures`` (both models' figures,
the tolerances and the images' fingerprint, as one JSON object); the champion it was judged
against gets ``gate.v<challenger>`` (the same, briefly, as JSON).

Registration is safe to rerun: the version for a model URI is found again rather than
duplicated, aliases are set only once the version is READY, and a registry that fails
part-way raises :class:`RegistrationError` with a one-line message.
"""
from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from danvae.tracking import TrackingError, configure_tracking, failure_cause, quiet_downloads, tracking_failures

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_URI_TAG = "danvae.model_uri"
MODEL_SHA256_TAG = "danvae.model_sha256"  # of detector.pt: a scorer checks what it loads
GATE_FIGURES_TAG = "gate.figures"  # both models' figures on the gate images, the tolerances: one JSON object
DEFAULT_MIN_AUROC = 0.6
DEFAULT_AUROC_TOLERANCE = 0.01
DEFAULT_DARK_TOLERANCE = 0.02
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


class RegistryError(TrackingError):
    """The registry could not do what was asked; the message is one line for people."""


class RegistrationError(RegistryError):
    """Registering a model version failed part-way; rerunning is safe."""


class PromotionError(RegistryError):
    """The promotion gate could not run or record its decision; rerunning is safe."""


class ModelNotFoundError(RegistryError, FileNotFoundError):
    """No model at the given URI (unknown name, version or alias)."""


class ModelIntegrityError(RegistryError):
    """The model file fetched for a registered version is not the one that was registered."""


class IncompatibleModelError(RegistryError):
    """The model was saved by a danvae whose detector this code cannot load (changed
    architecture or config). Its pyfunc still works in a fresh process, with the code the
    model carries (``mlflow models serve``, or :func:`score_with_model_code`)."""


def _client(client=None):
    from mlflow import MlflowClient

    if client is None:
        configure_tracking()
        client = MlflowClient()
    return client


def _is_missing(exc: BaseException) -> bool:
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
                     tags: dict[str, Any] | None = None, alias: str | None = CHALLENGER, client=None,
                     wait_s: float = 300):
    """Register ``model_uri`` (a ``models:/<model id>`` from ``log_detector``, or ``runs:/...``)
    as a version of ``name``, wait until it is READY, then point ``alias`` at it.

    Rerunning with the same ``model_uri`` reuses the version it created (no duplicates).
    Raises :class:`RegistrationError` (one line: what failed, and that rerunning is safe)
    when the registry fails; no alias ever points at a version that is not READY.
    """
    from mlflow.exceptions import MlflowException

    client = _client(client)
    step = "creating the registered model"
    try:
        try:
            client.get_registered_model(name)
        except MlflowException as exc:
            if not _is_missing(exc):
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


def _link_logged_model(client, model_id: str, name: str, version: str) -> None:
    """Record the version on the logged model (as mlflow.register_model does), once."""
    import json

    from mlflow.exceptions import MlflowException

    key = "mlflow.modelVersions"
    try:
        model = client.get_logged_model(model_id)
    except MlflowException as exc:
        if _is_missing(exc):
            return
        raise
    links = json.loads(model.tags.get(key) or "[]")
    entry = {"name": name, "version": version}
    if entry not in links:
        client.set_logged_model_tags(model_id, {key: json.dumps([*links, entry])})


# ---- loading ---------------------------------------------------------------------------------


def _detector_dir(model_dir: Path) -> Path:
    from danvae.serving import DETECTOR_ARTIFACT

    candidate = model_dir / "artifacts" / DETECTOR_ARTIFACT
    if not candidate.is_dir():
        raise ModelNotFoundError(f"{model_dir} is an MLflow model without a DAn-VAE detector (no artifacts/"
                                 f"{DETECTOR_ARTIFACT}/): log it with danvae.serving.log_detector")
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
                "danvae.registry.score_with_model_code" if mlflow_model else "retrain it with this code")
        raise IncompatibleModelError(
            f"{uri} was saved by a danvae this code cannot load ({type(exc).__name__}: {first}); {hint}"
        ) from exc


def model_file_sha256(detector_dir: str | Path) -> str:
    """SHA-256 of a saved detector's weights file."""
    from danvae.detector import DETECTOR_FILE

    return hashlib.sha256((Path(detector_dir) / DETECTOR_FILE).read_bytes()).hexdigest()


def registered_version(uri: str, client=None):
    """The registry entry (an MLflow ModelVersion) behind ``models:/name@alias`` or
    ``models:/name/N``; None for any other kind of URI."""
    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if not m:
        return None
    client = _client(client)
    try:
        return client.get_model_version_by_alias(m[1], m[2]) if m[2] else client.get_model_version(m[1], m[3])
    except tracking_failures() as exc:
        if _is_missing(exc):
            raise ModelNotFoundError(f"no registered model at {uri}: {failure_cause(exc)}") from exc
        raise RegistryError(f"could not read the registry entry of {uri}: {failure_cause(exc)}") from exc


def _verify_registered_file(uri: str, detector_dir: Path) -> None:
    """For ``models:/name@alias`` and ``models:/name/N``: the fetched weights must hash to the
    version's :data:`MODEL_SHA256_TAG` (versions registered without one are not checked)."""
    mv = registered_version(uri)
    if mv is None:
        return
    want = (mv.tags or {}).get(MODEL_SHA256_TAG)
    if want and model_file_sha256(detector_dir) != want:
        raise ModelIntegrityError(f"{uri} (version {mv.version}): the fetched model file does not match the "
                                  f"SHA-256 registered with it; it was changed after registration and is not loaded")


def load_detector(uri: str | Path, device: str = "cpu"):
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
            if _is_missing(exc):
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
    from danvae.tracking import project_root

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


# ---- the promotion gate ------------------------------------------------------------------------


@dataclass
class PromotionDecision:
    """What the gate decided and why, with both models' figures on the same images."""

    promoted: bool
    reason: str
    name: str
    version: str
    decision: str  # "promoted", "rejected", "forced" or "unchanged" (already the champion)
    champion_version: str | None  # the champion before this decision
    challenger_metrics: dict[str, Any] = field(default_factory=dict)
    champion_metrics: dict[str, Any] | None = None
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def images_fingerprint(images: Any, labels: np.ndarray) -> str:
    """sha256 (first 16 hex) of the gate's images and labels, so two decisions can be compared."""
    h = hashlib.sha256()
    arrays = images if isinstance(images, (list, tuple)) else [images]
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    h.update(np.asarray(labels, dtype=bool).tobytes())
    return h.hexdigest()[:16]


def _metrics(table: pd.DataFrame, labels: np.ndarray, score_kind: str | None, threshold: float | None,
             scored_with: str) -> dict[str, Any]:
    from danvae.evaluate import evaluate_scores

    if len(table) != len(labels):
        raise ValueError(f"{len(table)} images but {len(labels)} labels")
    table = pd.DataFrame(table).reset_index(drop=True)
    table["label"] = np.where(labels, "anomaly", "normal")
    m = evaluate_scores(table)
    keep = ("auroc", "auroc_darkest", "auprc", "f1", "auroc_by_brightness", "n_images", "n_anomalies")
    out = {k: m.get(k) for k in keep}
    out.update(score_kind=score_kind, threshold=threshold, scored_with=scored_with)
    return out


def gate_metrics(detector, images: Any, labels: np.ndarray, nuisance: np.ndarray | None = None) -> dict[str, Any]:
    """AUROC overall and per brightness quintile (and friends) of ``detector`` on ``images``
    (``nuisance``: the per-image factor, for a detector trained on a recorded one)."""
    from danvae.serving import model_batch

    table = detector.score_table(model_batch(detector, images), nuisance=nuisance)
    return _metrics(table, np.asarray(labels, dtype=bool), detector.score_kind, detector.threshold, "this checkout")


def model_gate_metrics(model_uri: str, images: Any, labels: np.ndarray, nuisance: np.ndarray | None = None
                       ) -> dict[str, Any]:
    """:func:`gate_metrics` of a registered model: in this process when this code can load it,
    else with the model's own code in a fresh process (a champion saved by an older danvae)."""
    import mlflow

    try:
        return gate_metrics(load_detector(model_uri), images, labels, nuisance)
    except IncompatibleModelError:
        meta = (mlflow.models.get_model_info(model_uri).metadata or {}).get("danvae", {})
        table = score_with_model_code(model_uri, images)
        return _metrics(table, np.asarray(labels, dtype=bool), meta.get("score_kind"), meta.get("threshold"),
                        "the model's own code")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _judge(ch: dict, champ: dict | None, champion_version: str | None, *, auroc_tolerance: float,
           dark_tolerance: float, validation_passed: bool | None, min_auroc: float) -> tuple[bool, str]:
    """The gate itself: (passes, reason). ``validation_passed`` None: no report was given (not judged)."""
    failures: list[str] = []
    notes: list[str] = []
    if validation_passed is False:
        failures.append("data validation did not pass")
    a = ch.get("auroc")
    if champ is None:
        if a is None:
            failures.append("AUROC cannot be computed (the gate images need normal and anomalous images)")
        elif a < min_auroc:
            failures.append(f"AUROC {_fmt(a)} is below the floor {min_auroc:g} for a first champion")
        else:
            notes.append(f"first champion: AUROC {_fmt(a)} >= floor {min_auroc:g}")
    else:
        b = champ.get("auroc")
        if a is None or b is None:
            failures.append("AUROC cannot be computed (the gate images need normal and anomalous images)")
        elif a < b - auroc_tolerance:
            failures.append(f"AUROC {_fmt(a)} is {b - a:.4f} below champion v{champion_version}'s {_fmt(b)} "
                            f"(tolerance {auroc_tolerance:g})")
        else:
            notes.append(f"AUROC {_fmt(a)} vs champion v{champion_version}'s {_fmt(b)} "
                         f"(tolerance {auroc_tolerance:g})")
        da, db = ch.get("auroc_darkest"), champ.get("auroc_darkest")
        if da is None or db is None:
            # Same images for both, so both are None: no anomalies (or no normals) among the darkest fifth.
            notes.append("darkest-quintile AUROC not computable on these images (one class only); not judged")
        elif da < db - dark_tolerance:
            failures.append(f"darkest-quintile AUROC {_fmt(da)} is {db - da:.4f} below champion "
                            f"v{champion_version}'s {_fmt(db)} (tolerance {dark_tolerance:g})")
        else:
            notes.append(f"darkest-quintile AUROC {_fmt(da)} vs {_fmt(db)} (tolerance {dark_tolerance:g})")
    notes.append("validation passed" if validation_passed else "validation not checked (no report given)")
    if failures:
        return False, "; ".join(failures)
    return True, "; ".join(notes)


def describe_version(name: str, version: str | int, text: str, client=None) -> None:
    """Set a version's description (its model card, shown on MLflow's version page)."""
    client = _client(client)
    try:
        client.update_model_version(name, str(version), description=text)
    except tracking_failures() as exc:
        raise RegistryError(f"writing the description of model '{name}' version {version} failed: "
                            f"{failure_cause(exc)}; rerunning is safe") from exc


def _json_number(v: Any) -> Any:
    """numpy scalars in the gate's figures, as JSON numbers."""
    return v.item() if hasattr(v, "item") else str(v)


def _tag_value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_tag_value(x) for x in v) + "]"
    return str(v)


def _resolve_version(client, name: str, version: str | int) -> str:
    v = str(version)
    if v.isdigit():
        return v
    return str(client.get_model_version_by_alias(name, v).version)


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise


def _complete_decision(client, name: str, mv) -> str | None:
    """Write the ``gate.decision`` of a champion whose promotion died between the alias and
    that last tag; the decision is the one its ``gate.reason`` (written before the alias)
    records. Returns it, or None when there was nothing to complete."""
    if "gate.decision" in mv.tags:
        return None
    decided = mv.tags.get("gate.reason", "").split(":", 1)[0]
    if decided not in ("promoted", "forced"):  # not moved by the gate (e.g. by hand): nothing to claim
        return None
    client.set_model_version_tag(name, str(mv.version), "gate.decision", decided)
    return decided


def promote(client, name: str, version: str | int, images: Any, labels: Any, *,
            auroc_tolerance: float = DEFAULT_AUROC_TOLERANCE, dark_tolerance: float = DEFAULT_DARK_TOLERANCE,
            validation_passed: bool | None = True, min_auroc: float = DEFAULT_MIN_AUROC, force: bool = False,
            reason: str | None = None, nuisance: Any = None) -> PromotionDecision:
    """Gate version ``version`` of ``name`` against the current champion on ``images`` /
    ``labels`` (bool, True = anomaly) and move ``champion`` to it when it passes.

    ``client`` is an ``MlflowClient`` or None (the configured tracking URI). ``version`` may
    be a number or an alias (``"challenger"``). ``images``: uint8 N×H×W×C of any size (or a
    list of H×W×C arrays); each model resizes them as its training did. ``min_auroc`` is the
    floor for a first champion. ``validation_passed`` None: no validation report was given
    (recorded as "not checked", not judged). ``force=True`` promotes whatever the gate says and needs a
    non-empty ``reason``, recorded as a tag. ``nuisance``: each image's recorded nuisance factor,
    for models trained on one (``data.nuisance``). The champion alias moves after the gate's
    figures are tagged and before ``gate.decision`` is; rerunning after a failure is safe.
    """
    if force and not (reason or "").strip():
        raise ValueError("forcing a promotion needs a reason (--reason \"...\"), which is recorded on the version")
    labels = np.asarray(labels, dtype=bool)
    client = _client(client)
    step = f"reading model '{name}' from the registry"
    try:
        version = _resolve_version(client, name, version)
        mv = client.get_model_version(name, version)
        if mv.status != "READY":
            raise PromotionError(f"model '{name}' version {version} is {mv.status}, not READY: register it again "
                                 f"before promoting")
        champion = _champion(client, name)
        champion_version = str(champion.version) if champion is not None else None
        if champion_version == version:
            step = f"completing the decision tag on version {version}"
            completed = _complete_decision(client, name, mv)
            return PromotionDecision(True, f"version {version} is already the champion"
                                     + (f" (its '{completed}' decision tag, lost in a crash, is written now)"
                                        if completed else ""), name, version, "unchanged", champion_version)
        step = f"scoring version {version} on the gate images"
        ch = model_gate_metrics(f"models:/{name}/{version}", images, labels, nuisance)
        champ = None
        if champion is not None:
            step = f"scoring champion version {champion_version} on the gate images"
            champ = model_gate_metrics(f"models:/{name}/{champion_version}", images, labels, nuisance)
        passes, gate_reason = _judge(ch, champ, champion_version, auroc_tolerance=auroc_tolerance,
                                     dark_tolerance=dark_tolerance, validation_passed=validation_passed,
                                     min_auroc=min_auroc)
        if force:
            decision, promoted = "forced", True
            why = f"forced: {reason.strip()} (the gate would have {'passed' if passes else 'failed'}: {gate_reason})"
        else:
            decision, promoted = ("promoted" if passes else "rejected"), passes
            why = f"{decision}: {gate_reason}"
        result = PromotionDecision(promoted, why, name, version, decision, champion_version, ch, champ, force)

        step = f"writing the decision tags on version {version}"
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        fingerprint = images_fingerprint(images, labels)
        kept = ("auroc", "auroc_darkest", "auprc", "f1", "auroc_by_brightness", "score_kind", "threshold",
                "scored_with")
        figures = {
            "evaluated_at": now, "images_sha256": fingerprint, "n_images": ch.get("n_images"),
            "n_anomalies": ch.get("n_anomalies"), "champion_version": champion_version,
            "tolerances": {"auroc": auroc_tolerance, "dark": dark_tolerance,
                           **({"min_auroc": min_auroc} if champion is None else {})},
            "challenger": {k: ch.get(k) for k in kept},
            "champion": None if champ is None else {k: champ.get(k) for k in kept},
        }
        # A few flat tags to read in the versions table, the figures as one JSON tag. The decision
        # tag is written last, after the alias: a crash part-way leaves no version tagged
        # "promoted" that is not the champion, and a rerun completes the promotion.
        tags: dict[str, Any] = {
            "gate.reason": why,
            "gate.validation_passed": "not checked" if validation_passed is None else validation_passed,
            "gate.forced": force, **({"gate.force_reason": reason.strip()} if force else {}),
            GATE_FIGURES_TAG: json.dumps(figures, default=_json_number),
        }
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v if k == GATE_FIGURES_TAG else _tag_value(v))
        if champion is not None:
            step = f"writing the decision tags on champion version {champion_version}"
            judged = {"decision": decision, "evaluated_at": now, "images_sha256": fingerprint,
                      "auroc": champ.get("auroc"), "auroc_darkest": champ.get("auroc_darkest"),
                      "challenger_auroc": ch.get("auroc"), "challenger_auroc_darkest": ch.get("auroc_darkest")}
            client.set_model_version_tag(name, champion_version, f"gate.v{version}",
                                         json.dumps(judged, default=_json_number))
        if promoted:
            step = f"pointing alias '{CHAMPION}' at version {version}"
            client.set_registered_model_alias(name, CHAMPION, version)
            if champion is not None:
                client.set_model_version_tag(name, champion_version, "gate.replaced_by", version)
        step = f"writing the decision tag on version {version}"
        client.set_model_version_tag(name, version, "gate.decision", decision)
        return result
    except RegistryError:
        raise
    except tracking_failures() as exc:
        raise PromotionError(f"promoting model '{name}' version {version} failed while {step}: {failure_cause(exc)}; "
                             f"rerunning the promotion is safe") from exc
