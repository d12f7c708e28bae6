"""Register the pipeline's trained model and run the promotion gate on the current test split.

    decision = register_and_promote(Path("."), load_params())

Reads ``models/run.json`` (written by the train stage), registers the logged model if
the stage could not (alias ``challenger``), then compares it with the current
``champion`` on the same test images and moves ``champion`` only when it is not worse.
"""
from __future__ import annotations

import json
from pathlib import Path

from danvae.config import Params
from danvae.data.ingest import load_images, load_manifest
from danvae.data.selection import test_rows
from danvae.registry import MODEL_SHA256_TAG, promote, register_version
from danvae.tracking import configure_tracking


def validation_passed(project_dir: Path) -> bool:
    report = project_dir / "reports" / "validation.json"
    return report.exists() and bool(json.loads(report.read_text()).get("success"))


def register_and_promote(project_dir: Path, params: Params, validation_passed_: bool | None = None, *,
                         force: bool = False, reason: str | None = None) -> dict:
    project_dir = Path(project_dir).resolve()
    configure_tracking(root=project_dir)
    run_file = project_dir / "models" / "run.json"
    if not run_file.exists():
        raise FileNotFoundError(f"{run_file} not found: run the pipeline's train stage first")
    run = json.loads(run_file.read_text())
    name = params.tracking.registered_model
    version = run.get("registered_version")
    if not version or run.get("registered_model") != name:
        tags = {MODEL_SHA256_TAG: run["model_sha256"]} if run.get("model_sha256") else None
        version = str(register_version(run["model_uri"], name, run_id=run["run_id"], tags=tags,
                                       alias=params.tracking.alias).version)
    manifest = load_manifest(project_dir / "data")
    test = test_rows(manifest, params.data.test_anomaly_share)
    images = load_images(project_dir / "data")[test["row"].to_numpy()]
    passed = validation_passed(project_dir) if validation_passed_ is None else validation_passed_
    decision = promote(None, name, version, images, (test["label"] == "anomaly").to_numpy(),
                       auroc_tolerance=params.promote.auroc_tolerance, dark_tolerance=params.promote.dark_tolerance,
                       validation_passed=passed, min_auroc=params.promote.min_auroc, force=force, reason=reason)
    return {"registered_model": name, "version": version, "run_id": run["run_id"], **decision.to_dict()}
