"""Orchestration: DVC stage entry points (``pipelines.stages``) and Prefect flows."""
from __future__ import annotations

from pipelines.env import PROJECT_ROOT, apply_defaults

__all__ = ["PROJECT_ROOT"]

# Offline, no telemetry, and tool state inside the project (see the stack notes).
apply_defaults()
