"""Nested params and metrics as MLflow's flat keys: ``{"model": {"zx_dim": 8}}`` → ``model.zx_dim``."""
from __future__ import annotations

import json
import numbers
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value's length
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /:]")


def _key(parts: Iterable[str], sep: str) -> str:
    return _KEY_UNSAFE.sub("_", sep.join(p for p in parts if p != ""))


def _plain(obj: Any) -> Any:
    """pydantic models and paths to plain values."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def flatten_params(params: Mapping[str, Any] | Any, prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Nested params (dicts, pydantic models, lists of dicts) as ``{"model.zx_dim": "24", ...}``.

    A list of scalars stays one value (``"[32, 64]"``); a list holding dicts or lists is
    indexed (``data.sources.0.type``). Values are strings cut to MLflow's length limit.
    """
    out: dict[str, str] = {}

    def walk(obj: Any, path: list[str]) -> None:
        obj = _plain(obj)
        if isinstance(obj, Mapping):
            if not obj and path:
                out[_key(path, sep)] = "{}"
            for k, v in obj.items():
                walk(v, [*path, str(k)])
        elif isinstance(obj, (list, tuple)) and any(isinstance(_plain(v), (Mapping, list, tuple)) for v in obj):
            for i, v in enumerate(obj):
                walk(v, [*path, str(i)])
        else:
            if isinstance(obj, (list, tuple)):
                text = json.dumps([_plain(v) for v in obj], default=str)
            else:
                text = str(obj)
            out[_key(path, sep) or "value"] = text[:MAX_PARAM_VALUE]

    walk(params, [prefix] if prefix else [])
    return out


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, float]:
    """Numeric metrics only: nested dicts become dotted keys, lists ``key_0..key_n``; None,
    strings and other non-numbers are skipped; booleans become 0/1."""
    out: dict[str, float] = {}

    def walk(obj: Any, key: str) -> None:
        if obj is None or isinstance(obj, (str, bytes)):
            return
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, _key([key, str(k)], sep))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{key}_{i}")
        elif isinstance(obj, (bool, numbers.Real)) or (hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0):
            try:
                out[key] = float(obj)
            except (TypeError, ValueError):
                return

    for k, v in metrics.items():
        walk(v, _key([prefix, str(k)], sep))
    return out
