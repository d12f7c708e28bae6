"""Register the pipeline's trained model and run the promotion gate on the current test split.

    decision = register_and_promote(Path("."), load_params())

Reads ``models/run.json`` (written by the train stage), registers the logged model if
the stage could not (alias ``challenger``), then compares it with the current
``champion`` on the same test images and moves ``champion`` only when it is not worse.
The version's description becomes its model card: data, training, test figures, the
gate's decision and the known limits.
"""
from __future__ import annotations

import json
from pathlib import Path

from danvae.config import Params
from danvae.data.manifest import load_images, load_manifest
from danvae.data.nuisance import factor_values
from danvae.data.selection import test_rows
from danvae.mlops.gate import describe_version, promote
from danvae.mlops.registry import MODEL_SHA256_TAG, register_version
from danvae.mlops.tracking import configure_tracking
from pipelines.paths import DATA, RUN_FILE, validation_passed


def register_and_promote(project_dir: Path, params: Params, validation_passed_: bool | None = None, *,
                         force: bool = False, reason: str | None = None) -> dict:
    project_dir = Path(project_dir).resolve()
    configure_tracking(root=project_dir)
    run_file = project_dir / RUN_FILE
    if not run_file.exists():
        raise FileNotFoundError(f"{run_file} not found: run the pipeline's train stage first")
    run = json.loads(run_file.read_text())
    name = params.tracking.registered_model
    version = run.get("registered_version")
    if not version or run.get("registered_model") != name:
        tags = {MODEL_SHA256_TAG: run["model_sha256"]} if run.get("model_sha256") else None
        version = str(register_version(run["model_uri"], name, run_id=run["run_id"], tags=tags,
                                       alias=params.tracking.alias).version)
    manifest = load_manifest(project_dir / DATA)
    test = test_rows(manifest, params.data.test_anomaly_share)
    images = load_images(project_dir / DATA)[test["row"].to_numpy()]
    passed = validation_passed(project_dir) if validation_passed_ is None else validation_passed_
    decision = promote(None, name, version, images, (test["label"] == "anomaly").to_numpy(),
                       auroc_tolerance=params.promote.auroc_tolerance, dark_tolerance=params.promote.dark_tolerance,
                       validation_passed=passed, min_auroc=params.promote.min_auroc, force=force, reason=reason,
                       nuisance=factor_values(test, params.data.nuisance))
    card = model_card(name, version, run, _read(project_dir / "models" / "train_metrics.json"),
                      _read(project_dir / "reports" / "metrics_full.json"), decision.decision, decision.reason)
    describe_version(name, version, card)
    return {"registered_model": name, "version": version, "run_id": run["run_id"], **decision.to_dict()}


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def model_card(name: str, version: str, run: dict, train: dict, test: dict, decision: str, reason: str) -> str:
    """The version's description (markdown): what it was trained on, how it scored, what the gate said."""
    bins = " / ".join(_f(a) for a in test.get("auroc_by_brightness") or [])
    return "\n".join([
        f"### {name} v{version}",
        f"- **Data**: manifest md5 `{run.get('data_version', '?')}`; trained on {train.get('n_train', '?')} images "
        f"({train.get('n_train_anomalies', '?')} labelled anomalies, {train.get('n_train_masks', '?')} with masks), "
        f"{train.get('epochs', '?')} epochs; MLflow run `{run.get('run_id', '?')}`.",
        f"- **Validation**: AUROC {_f(train.get('val_auroc'))} (95 % interval {_f(train.get('val_auroc_low'))}–"
        f"{_f(train.get('val_auroc_high'))}); threshold {train.get('threshold', float('nan')):.4g}.",
        f"- **Test** ({test.get('n_images', '?')} images, {test.get('n_anomalies', '?')} anomalies): test AUROC "
        f"{_f(test.get('auroc'))} (95 % interval {_f(test.get('auroc_low'))}–{_f(test.get('auroc_high'))}), "
        f"darkest quintile {_f(test.get('auroc_darkest'))}, false alarms {_f(test.get('fpr'))} overall and "
        f"{_f(test.get('fpr_darkest'))} on the darkest normals; AUROC by brightness quintile, darkest first: {bins}.",
        f"- **Gate**: {decision}: {reason}",
        "- **Known limits**: judged only on this project's test split; a new material, camera or lighting set-up "
        "needs its normal images in training before its scores mean anything; interval widths reflect the number "
        "of test anomalies.",
    ])
