"""What every stage shares: params loading and a one-line exit for user errors."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from danvae.config import Params, ParamsError, load_params
from danvae.data.folders import DataError
from danvae.images import ImageError
from danvae.model_file import CorruptModelFileError, UnsafeModelFileError
from danvae.tracking import TrackingError
from danvae.train import DeviceUnavailable, TrainingDiverged

# Failures a rerun of the same stage would repeat: one line on stderr, exit 1, not retried.
USER_ERRORS = (ParamsError, DataError, ImageError, FileNotFoundError, TrackingError, DeviceUnavailable,
               TrainingDiverged, CorruptModelFileError, UnsafeModelFileError)
RUN_FILE = Path("models/run.json")


def run_stage(name: str, body: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    """Run a stage body; user errors end the process with one line and exit code 1."""
    try:
        body(load_params(params_path))
    except USER_ERRORS as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)


def read_run(path: Path = RUN_FILE) -> dict:
    """The train stage's record of its MLflow run and registered model."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the train stage first (dvc repro train)")
    return json.loads(path.read_text())


def write_json(path: str | Path, obj: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
