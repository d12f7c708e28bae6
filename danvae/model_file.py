"""Reading model and checkpoint files without running code from them.

    state = load_weights(path, map_location="cpu")   # dict of tensors and plain values

``torch.load`` outside its weights-only mode unpickles arbitrary objects, so a crafted
``detector.pt`` would run its author's code on every scorer that loads it. Files here
hold only tensors, dicts, lists, strings and numbers, which ``weights_only=True`` reads.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class UnsafeModelFileError(ValueError):
    """The file holds objects beyond weights and plain values: refused, never executed."""


class CorruptModelFileError(ValueError):
    """The file is truncated or not a torch file at all."""


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file that may hold only tensors and plain Python values."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeModelFileError(
            f"{path} holds objects beyond weights and was not loaded (it may have been tampered with): "
            f"{' '.join(str(exc).split())[:160]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptModelFileError(
            f"{path} is not a readable model file ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
            f"restore it or retrain"
        ) from None
