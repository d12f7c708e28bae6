"""Orchestration: DVC stage entry points (``pipelines.stages``) and Prefect flows."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Offline, no telemetry, and tool state inside the project (see the stack notes).
for _key, _value in {
    "DVC_NO_ANALYTICS": "1",
    "DVC_SITE_CACHE_DIR": str(PROJECT_ROOT / ".dvc" / "tmp" / "site_cache"),
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_HOME": str(PROJECT_ROOT / ".prefect"),
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MPLCONFIGDIR": str(PROJECT_ROOT / ".cache" / "matplotlib"),
}.items():
    os.environ.setdefault(_key, _value)
