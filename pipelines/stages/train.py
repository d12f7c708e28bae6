"""Stage train: train-split images → models/detector/, an MLflow run with the logged model,
a registered version (alias ``challenger``), and models/run.json naming them."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from danvae.config import Params
from danvae.data.folders import DataError
from danvae.data.manifest import load_images, load_manifest
from danvae.data.masks import has_mask, load_masks
from danvae.data.nuisance import BRIGHTNESS, factor_values
from danvae.data.selection import training_rows, validation_rows
from danvae.detector import Detector
from danvae.distributed import launch, requested_world
from danvae.mlops.packaging import log_run_model
from danvae.mlops.registry import MODEL_SHA256_TAG, register_version
from danvae.mlops.provenance import git_commit
from danvae.mlops.runs import TrainingRun
from danvae.mlops.tracking import configure_tracking, portable_uri
from pipelines.paths import DATA, RUN_FILE
from pipelines.stages.common import pipeline_outputs, run_stage, write_json

MODEL_DIR = Path("models/detector")

METRICS = Path("models/train_metrics.json")


def checkpoint_dir(params: Params, manifest_ids: list[str]) -> Path:
    """Outside DVC's outputs (which DVC deletes before a rerun), keyed by what the run depends on,
    so an interrupted `dvc repro` resumes from its last epoch and a changed run starts afresh."""
    key = json.dumps([params.model.model_dump(), params.train.model_dump(), params.data.image_size,
                      params.data.channels, params.data.train_anomaly_ratio, sorted(manifest_ids)]
                     + ([params.data.nuisance] if params.data.nuisance != BRIGHTNESS else []), sort_keys=True)
    return Path(".cache/checkpoints") / hashlib.sha256(key.encode()).hexdigest()[:16]


def run_name(params: Params) -> str:
    """``<model>-zx<d>-r<ratio>-<short commit>``: runs of a sweep told apart in MLflow's list."""
    commit = (git_commit() or "nogit")[:7]
    return f"{params.model.name}-zx{params.model.zx_dim}-r{params.data.train_anomaly_ratio:g}-{commit}"


def main(params: Params) -> None:
    world = requested_world()
    if params.train.nproc > 1 and world.size == 1:
        code = launch("pipelines.stages.train", [], params.train.nproc, Path(".cache/torchrun"))
        if code != 0:
            print(f"train: error: distributed training ({params.train.nproc} processes) failed with exit code "
                  f"{code}; run the stage again to resume from the last checkpoint", file=sys.stderr)
            sys.exit(1)
        return
    manifest = load_manifest(DATA)
    images = load_images(DATA)
    train = training_rows(manifest, params.data.train_anomaly_ratio)
    val = validation_rows(manifest)
    if not (train["label"] == "normal").any():
        raise DataError("no normal images in the train split: add images to a source folder's normal/")
    if val.empty:
        raise DataError("no labelled images in the validation split to calibrate the threshold on")
    detector = Detector(params.model, image_size=params.data.image_size, channels=params.data.channels,
                        train=params.train, score=params.score, nuisance=params.data.nuisance)
    fit = dict(val_images=images[val["row"].to_numpy()], val_is_anomaly=(val["label"] == "anomaly").to_numpy(),
               run_dir=MODEL_DIR, checkpoint_dir=checkpoint_dir(params, list(train["id"])),
               masks=load_masks(DATA, train, params.data.image_size), has_mask=has_mask(train),
               nuisance=factor_values(train, params.data.nuisance),
               val_nuisance=factor_values(val, params.data.nuisance))
    if not world.is_main:  # another DDP rank: it trains in step with rank 0, which tracks, saves and registers
        detector.fit(images[train["row"].to_numpy()], (train["label"] == "anomaly").to_numpy(), progress=False, **fit)
        return
    configure_tracking(root=Path.cwd())  # the DVC stage runs in the project it belongs to
    data_version = hashlib.md5((DATA / "manifest.parquet").read_bytes()).hexdigest()  # = DVC's hash of it
    with TrainingRun(params.tracking.experiment, run_name=run_name(params), params=params.model_dump(by_alias=True),
                     data_version=data_version, generated=pipeline_outputs()) as run:
        run.log_dataset(manifest, "manifest", source=str((DATA / "manifest.parquet").resolve()), digest=data_version)
        detector.fit(images[train["row"].to_numpy()], (train["label"] == "anomaly").to_numpy(),
                     on_epoch_end=run.on_epoch_end, **fit)
        info = log_run_model(run, detector, limits=params.serve.model_dump())
    record = {**run.summary(), "model_sha256": info.danvae_model_sha256}
    record["tracking_uri"] = portable_uri(record["tracking_uri"], Path.cwd())  # run.json is committed
    # Written before registering, so a registry outage leaves the run findable; rerunning registers it.
    write_json(RUN_FILE, record)
    version = register_version(info.model_uri, params.tracking.registered_model, run_id=run.run_id,
                               tags={MODEL_SHA256_TAG: record["model_sha256"]}, alias=params.tracking.alias)
    record.update(registered_model=params.tracking.registered_model, registered_version=str(version.version))
    write_json(RUN_FILE, record)
    last = detector.history[-1]
    write_json(METRICS, {
        "epochs": len(detector.history), "loss": last["total"], "recon": last["recon"], "kl_x": last["kl_x"],
        "kl_y": last["kl_y"], "aux": last["aux"], "val_auroc": detector.val_aurocs.get(detector.score_kind),
        "threshold": detector.threshold, "n_train": len(train),
        "n_train_anomalies": int((train["label"] == "anomaly").sum()),
        "n_train_masks": int(has_mask(train).sum()),
        "val_auroc_low": (detector.val_auroc_interval or (None, None))[0],
        "val_auroc_high": (detector.val_auroc_interval or (None, None))[1],
    })
    resumed = f", resumed from epoch {detector.resumed_from_epoch + 1}" if detector.resumed_from_epoch else ""
    processes = f" in {world.size} processes" if world.size > 1 else ""
    print(f"train: {params.model.name} on {len(train)} images{resumed}{processes}; score {detector.score_kind} ({detector.kind_choice}), "
          f"threshold {detector.threshold:.4g} ({detector.threshold_method}); MLflow run {run.run_id}, "
          f"registered {params.tracking.registered_model} v{version.version} as {params.tracking.alias}")


if __name__ == "__main__":
    run_stage("train", main)
