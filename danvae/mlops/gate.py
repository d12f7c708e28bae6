"""The promotion gate: judge a registered version against the champion and move the alias.

    decision = promote(None, "danvae", "challenger", test_images, test_is_anomaly,
                       auroc_tolerance=0.01, dark_tolerance=0.02, validation_passed=True, min_auroc=0.6)

The gate scores the challenger and the current champion on the same images and promotes when

* overall AUROC is not worse than the champion's by more than ``auroc_tolerance``,
* AUROC in the darkest brightness quintile is not worse by more than ``dark_tolerance``, and
* the data validation passed;

with no champion yet, the version is promoted when validation passed and its AUROC reaches
``min_auroc``. The defaults are :class:`danvae.config.PromoteConfig`'s. The challenger
version is tagged ``gate.decision``, ``gate.reason``, ``gate.validation_passed``,
``gate.forced`` and ``gate.figures`` (both models' figures, the tolerances and the images'
fingerprint, as one JSON object); the champion it was judged against gets
``gate.v<challenger>`` (the same, briefly, as JSON). A champion saved by an older danvae
that this code cannot load is scored with the code it carries, in a fresh process.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from danvae.config import PromoteConfig
from danvae.mlops.registry import (CHAMPION, IncompatibleModelError, RegistryError, is_missing, registry_client,
                                   load_detector, score_with_model_code)
from danvae.mlops.tracking import failure_cause, tracking_failures

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from danvae.detector import Detector

GATE_FIGURES_TAG = "gate.figures"  # both models' figures on the gate images, the tolerances: one JSON object
_DEFAULTS = PromoteConfig()


class PromotionError(RegistryError):
    """The promotion gate could not run or record its decision; rerunning is safe."""


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
    from danvae.evaluation.metrics import evaluate_scores

    if len(table) != len(labels):
        raise ValueError(f"{len(table)} images but {len(labels)} labels")
    table = pd.DataFrame(table).reset_index(drop=True)
    table["label"] = np.where(labels, "anomaly", "normal")
    m = evaluate_scores(table)
    keep = ("auroc", "auroc_darkest", "auprc", "f1", "auroc_by_brightness", "n_images", "n_anomalies")
    out = {k: m.get(k) for k in keep}
    out.update(score_kind=score_kind, threshold=threshold, scored_with=scored_with)
    return out


def gate_metrics(detector: Detector, images: Any, labels: np.ndarray, nuisance: np.ndarray | None = None
                 ) -> dict[str, Any]:
    """AUROC overall and per brightness quintile (and friends) of ``detector`` on ``images``
    (``nuisance``: the per-image factor, for a detector trained on a recorded one)."""
    from danvae.mlops.packaging import model_batch

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


def _against_champion(what: str, a: float, b: float, tolerance: float, champion_version: str | None
                      ) -> tuple[bool, str]:
    """Whether the challenger's figure ``a`` is within ``tolerance`` below the champion's ``b``, and why."""
    if a < b - tolerance:
        return False, (f"{what} {_fmt(a)} is {b - a:.4f} below champion v{champion_version}'s {_fmt(b)} "
                       f"(tolerance {tolerance:g})")
    return True, f"{what} {_fmt(a)} vs champion v{champion_version}'s {_fmt(b)} (tolerance {tolerance:g})"


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
        else:
            ok, text = _against_champion("AUROC", a, b, auroc_tolerance, champion_version)
            (notes if ok else failures).append(text)
        da, db = ch.get("auroc_darkest"), champ.get("auroc_darkest")
        if da is None or db is None:
            # Same images for both, so both are None: no anomalies (or no normals) among the darkest fifth.
            notes.append("darkest-quintile AUROC not computable on these images (one class only); not judged")
        else:
            ok, text = _against_champion("darkest-quintile AUROC", da, db, dark_tolerance, champion_version)
            (notes if ok else failures).append(text)
    notes.append("validation passed" if validation_passed else "validation not checked (no report given)")
    if failures:
        return False, "; ".join(failures)
    return True, "; ".join(notes)


def describe_version(name: str, version: str | int, text: str, client: MlflowClient | None = None) -> None:
    """Set a version's description (its model card, shown on MLflow's version page)."""
    client = registry_client(client)
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
        if is_missing(exc):
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


def promote(client: MlflowClient | None, name: str, version: str | int, images: Any, labels: Any, *,
            auroc_tolerance: float = _DEFAULTS.auroc_tolerance, dark_tolerance: float = _DEFAULTS.dark_tolerance,
            validation_passed: bool | None = True, min_auroc: float = _DEFAULTS.min_auroc, force: bool = False,
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
    client = registry_client(client)
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
            why = f"forced: {(reason or '').strip()} (the gate would have {'passed' if passes else 'failed'}: {gate_reason})"
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
            "gate.forced": force, **({"gate.force_reason": (reason or '').strip()} if force else {}),
            GATE_FIGURES_TAG: json.dumps(figures, default=_json_number),
        }
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v if k == GATE_FIGURES_TAG else _tag_value(v))
        if champion is not None and champ is not None:  # champ is scored wherever there is a champion
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
