"""A labelled image folder as arrays, ready for ``Detector.fit``.

    data = load_folder("data/surfaces", image_size=64)
    det = Detector("danvae", image_size=64).fit(data.images, data.is_anomaly, masks=data.masks,
                                                has_mask=data.has_mask)

The folder holds ``normal/**`` and ``anomaly/<defect>/**`` (a flat folder is ``unknown``),
with defect masks, if any, in ``masks/<defect>/<same name>`` or the MVTec AD layout
(``ground_truth/<defect>/<name>_mask.png``). Unreadable images are skipped, and masks that
are empty or unreadable left out, each with its reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from danvae.data.folders import discover, pack, scan
from danvae.data.masks import find_masks, has_mask, load_masks


@dataclass
class LabelledFolder:
    images: np.ndarray  # N×S×S×C uint8, resized and converted as training does
    is_anomaly: np.ndarray  # N bool
    table: pd.DataFrame  # per image: path, label, defect, brightness, ...
    masks: np.ndarray | None = None  # N×S×S bool; None when the folder holds no mask
    has_mask: np.ndarray | None = None  # N bool: the mask is known (every normal image: nothing is defective)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of images not read
    unusable_masks: list[str] = field(default_factory=list)  # masks left out: empty or unreadable


def load_folder(data_dir: str | Path, image_size: int = 64, channels: int = 3, *, masks: bool = True,
                progress: bool = False) -> LabelledFolder:
    """Every readable image under ``data_dir`` with its label and (``masks``), where there is one, its mask."""
    refused: list[tuple[str, str]] = []
    packed = pack(discover(data_dir, refused), image_size, channels, progress=progress)
    data = LabelledFolder(packed.images, (packed.table["label"] == "anomaly").to_numpy(), packed.table,
                          skipped=refused + packed.skipped)
    if not (masks and len(packed.images)):
        return data
    found = scan(data_dir)
    mask_of = dict(zip(found.found["path"], find_masks(found)))
    rows = pd.DataFrame({"mask_path": [mask_of.get(p, "") for p in packed.table["path"]]})
    listed = has_mask(rows)
    if listed.any():
        data.masks = load_masks("", rows, image_size)  # whole paths: nothing to join them to
        usable = listed & data.masks.any(axis=(1, 2))
        data.unusable_masks = list(rows["mask_path"][listed & ~usable])
        data.has_mask = usable | (packed.table["label"] == "normal").to_numpy()
    return data
