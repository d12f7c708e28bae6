"""Train/val/test splits decided by an image's content hash alone.

An image's split depends on nothing but its id (sha256 hex of the file bytes) and the
shares, so it never changes when other images arrive, are removed, or are re-ordered.

    split_of("9f86d081884c7d65...", SplitShares())          # "train"
    split_of_many(manifest["id"], SplitShares())            # array of "train"/"val"/"test"
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from danvae.config import SplitShares
from danvae.data.manifest import SPLITS

_DIGITS = 15  # 60 bits of the hash: exact in a float64 mantissa's range, plenty of resolution
_SCALE = float(16**_DIGITS)


def unit_of(image_id: str) -> float:
    """Map a hex content hash to a number in [0, 1), uniform over hashes."""
    head = str(image_id)[:_DIGITS]
    if len(head) < _DIGITS:
        raise ValueError(f"image id must be a hex digest of at least {_DIGITS} characters, got {image_id!r}")
    try:
        return int(head, 16) / _SCALE
    except ValueError:
        raise ValueError(f"image id must be a hex digest, got {image_id!r}") from None


def _cut(u: np.ndarray, shares: SplitShares) -> np.ndarray:
    edges = np.array([shares.train, shares.train + shares.val])
    return np.array(SPLITS, dtype=object)[np.searchsorted(edges, u, side="right")]


def split_of(image_id: str, shares: SplitShares) -> str:
    """``train`` when u < train, ``val`` when u < train + val, else ``test``."""
    return str(_cut(np.array([unit_of(image_id)]), shares)[0])


def split_of_many(image_ids: Iterable[str], shares: SplitShares) -> np.ndarray:
    """Vectorised :func:`split_of`: an object array of split names, one per id."""
    u = np.fromiter((unit_of(i) for i in image_ids), dtype=np.float64)
    return _cut(u, shares)
