"""What every stage shares: params loading and a one-line exit for user errors."""
from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from danvae.config import Params, ParamsError, load_params
from danvae.data.folders import DataError
from danvae.images import ImageError
from danvae.model_file import CorruptModelFileError, UnsafeModelFileError
from danvae.mlops.tracking import TrackingError
from danvae.train import DeviceUnavailable, TrainingDiverged
from pipelines.paths import RUN_FILE

# Failures a rerun of the same stage would repeat: one line on stderr, exit 1, not retried.
USER_ERRORS = (ParamsError, DataError, ImageError, FileNotFoundError, TrackingError, DeviceUnavailable,
               TrainingDiverged, CorruptModelFileError, UnsafeModelFileError)
# A full disk or quota: one line too, but worth retrying once space is freed (the flow retries it).
NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def run_stage(name: str, body: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    """Run a stage body; user errors and a full disk end the process with one line and exit code 1."""
    try:
        body(load_params(params_path))
    except USER_ERRORS as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise
        print(f"{name}: failed: no room to write ({exc}); free some space and run it again", file=sys.stderr)
        sys.exit(1)


def format_figure(value: float | None, digits: int = 3) -> str:
    """A metric as the stages and the summary print it: fixed decimals, "–" when undefined."""
    return "–" if value is None else f"{value:.{digits}f}"


def read_run(path: Path = RUN_FILE) -> dict:
    """The train stage's record of its MLflow run and registered model."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the train stage first (dvc repro train)")
    return json.loads(path.read_text())


def write_json(path: str | Path, obj: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def pipeline_outputs(dvc_file: Path = Path("dvc.yaml")) -> list[str]:
    """Every path a stage of ``dvc_file`` writes (outs, metrics, plots), and DVC's lock file:
    what ``dvc repro`` itself changes in the checkout."""
    stages = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages", {})
    paths = ["dvc.lock"]
    for stage in stages.values():
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section) or []:
                paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths

