"""``danvae export``: a trained detector's scoring graph as one ONNX file, checked against PyTorch.

    danvae export --model runs/a --out model.onnx
    danvae export --model models:/danvae-surface@champion --out model.onnx --log-to-mlflow

The file takes uint8 images N×H×W×C at the model's size and returns every score kind, the
decision, the normalised score and the heatmap (``danvae.mlops.onnx_export``). Before it reports
success the command scores test images with both runtimes and fails when they differ by more
than ``--tolerance`` (relative to each output's largest value).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from danvae.cli.common import CommandError, add_model_command, read_folder

PARITY_IMAGES = 16
ONNX_TAG = "onnx_artifact"


def _check_images(det, data: str | None, quiet: bool) -> np.ndarray:
    if data:
        return read_folder(data, det.image_size, det.channels, progress=not quiet).images[:PARITY_IMAGES]
    rng = np.random.default_rng(0)  # no folder: smooth random surfaces are enough to compare two runtimes
    base = rng.integers(30, 220, (PARITY_IMAGES, 1, 1, det.channels))
    noise = rng.normal(0, 25, (PARITY_IMAGES, det.image_size, det.image_size, det.channels))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _version_to_log_to(uri: str):
    from danvae.mlops.registry import registered_version

    mv = registered_version(uri)
    if mv is None:
        raise CommandError(f"--log-to-mlflow needs --model models:/NAME/VERSION or models:/NAME@ALIAS, not {uri}")
    if not mv.run_id:
        raise CommandError(f"{uri} has no source run to log the ONNX file to")
    return mv


def _log_to_version(mv, onnx_path: Path) -> str:
    """Log the file to the run that made the registered version ``mv`` under onnx/, and tag
    the version with where it lies."""
    from mlflow import MlflowClient

    from danvae.mlops.registry import RegistryError
    from danvae.mlops.runs import log_to_run
    from danvae.mlops.tracking import failure_cause, tracking_failures

    log_to_run(mv.run_id, artifacts=[onnx_path], artifact_path="onnx")
    where = f"runs:/{mv.run_id}/onnx/{onnx_path.name}"
    try:
        MlflowClient().set_model_version_tag(mv.name, mv.version, ONNX_TAG, where)
    except tracking_failures() as exc:
        raise RegistryError(f"logged {where} but could not tag version {mv.version}: {failure_cause(exc)}") from exc
    return f"{where} (version {mv.version} tagged {ONNX_TAG})"


def cmd_export(args: argparse.Namespace) -> None:
    from danvae.mlops.onnx_export import OnnxDetector, export_onnx, parity
    from danvae.mlops.registry import load_detector

    version = _version_to_log_to(args.model) if args.log_to_mlflow else None
    det = load_detector(args.model)
    out = export_onnx(det, args.out)
    gap = parity(det, OnnxDetector(out), _check_images(det, args.data, args.quiet))
    if not gap <= args.tolerance:
        out.unlink(missing_ok=True)
        raise CommandError(f"the ONNX graph differs from PyTorch by {gap:.2e} (tolerance {args.tolerance:.0e}); "
                           "nothing was written")
    message = (f"exported {args.model} → {out} ({out.stat().st_size / 2**20:.1f} MiB; scores match PyTorch "
               f"within {gap:.1e} on {PARITY_IMAGES} images)")
    if version is not None:
        message += f"; logged as {_log_to_version(version, out)}"
    print(message, file=sys.stderr if args.quiet else sys.stdout)


def add_export_parser(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
                      ) -> argparse.ArgumentParser:
    p = add_model_command(subparsers, "export", parent, "the scoring graph as an ONNX file for onnxruntime",
                          __doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--data", help="a folder whose first images the parity check scores (default: generated ones)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest relative difference accepted")
    p.add_argument("--log-to-mlflow", action="store_true",
                   help="log the file to the registered version's run and tag the version (models:/ URIs)")
    p.set_defaults(func=cmd_export)
    return p
