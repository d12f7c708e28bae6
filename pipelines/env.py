"""The environment every tool the pipeline runs gets: offline, no telemetry, state inside the project.

``import pipelines`` applies :func:`project_defaults` to this process; :func:`tool_env` is the
environment for a child process (dvc, a stage, a Prefect server or worker).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from danvae import OFFLINE_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {**OFFLINE_ENV, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # the library's switches and Prefect's
PREFECT_STARTUP = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}  # a cold server on a slow disk


def project_defaults(project: Path = PROJECT_ROOT) -> dict[str, str]:
    """The switches (:data:`OFFLINE`) and where DVC, Prefect and matplotlib keep their state."""
    return {**OFFLINE, **PREFECT_STARTUP,
            "DVC_SITE_CACHE_DIR": str(project / ".dvc" / "tmp" / "site_cache"),
            "PREFECT_HOME": str(project / ".prefect"),
            "MPLCONFIGDIR": str(project / ".cache" / "matplotlib")}


def apply_defaults() -> None:
    """Set every default of :func:`project_defaults` this process has not set itself."""
    for key, value in project_defaults().items():
        os.environ.setdefault(key, value)


def tool_env(**overrides: str) -> dict[str, str]:
    """This process's environment for a child: the telemetry switches forced off, this
    interpreter's folder first on PATH (so ``python`` and ``dvc`` are the venv's), output
    unbuffered, then ``overrides``."""
    env = dict(os.environ)
    env.update(OFFLINE)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(overrides)
    return env
