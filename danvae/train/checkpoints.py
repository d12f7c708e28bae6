"""Checkpoint files: written atomically, and refused unless they fit the model exactly."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def save_atomically(state: dict, path: Path) -> None:
    """``torch.save`` through a temporary file: an interruption never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def check_fits(state: dict, model: nn.Module) -> None:
    """Refuse (ValueError) a checkpoint whose weights are not exactly this model's, before any is copied."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state["model"].items()}
    if want != got:
        differ = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        raise ValueError(f"weights do not fit this model (first difference: {differ[0]})")
    missing = [k for k in ("epoch", "history", "optimizer") if k not in state]
    if missing:
        raise ValueError(f"checkpoint lacks {', '.join(missing)}")
