"""A checkpoint is refused unless it fits the model exactly (it is written with
:func:`danvae.files.atomic_write`)."""
from __future__ import annotations

from torch import nn


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
