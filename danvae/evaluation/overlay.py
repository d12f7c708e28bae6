"""Pictures of what the detector saw: an image beside its heatmap, and a contact sheet of many.

    tile = overlay(image, heatmap)                      # H×W×C uint8, H×W float → (S)×(3S)×3 uint8
    sheet = contact_sheet([tile, ...], ["0.91 scratch_003.png", ...])

Three panels per image: the image, its heatmap alone (colour map ``inferno``, whose
lightness rises with the value, so the hottest spot is the lightest), and the heatmap
blended over the image. A probability map (values in [0, 1], the anomaly head's) is drawn
on that fixed scale, so a normal image looks dark; any other map on 0 .. its maximum.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLORMAP = "inferno"
BLEND = 0.5  # weight of the heatmap in the third panel


def _colormap(values: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[COLORMAP](np.clip(values, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


def heat_scale(heatmap: np.ndarray) -> np.ndarray:
    """The map in [0, 1]: as it is when it is a probability map, else divided by its maximum."""
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0)
    top = float(heat.max()) if heat.size else 0.0
    return heat if top <= 1.0 else heat / top


def overlay(image: np.ndarray, heatmap: np.ndarray, side: int = 192) -> np.ndarray:
    """``image`` (H×W×C uint8, C 1 or 3) and ``heatmap`` (h×w) as three side×side panels."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    picture = np.asarray(Image.fromarray(rgb).resize((side, side), Image.Resampling.BILINEAR))
    heat = Image.fromarray(heat_scale(heatmap).astype(np.float32), mode="F").resize((side, side),
                                                                                    Image.Resampling.BILINEAR)
    colours = _colormap(np.asarray(heat))
    blended = ((1 - BLEND) * picture + BLEND * colours).round().astype(np.uint8)
    return np.concatenate([picture, colours, blended], axis=1)


def contact_sheet(tiles: Sequence[np.ndarray], captions: Sequence[str], columns: int = 4,
                  caption_height: int = 14) -> np.ndarray:
    """Tiles (all the same shape) in a grid, each with its caption underneath."""
    if not tiles:
        raise ValueError("a contact sheet needs at least one tile")
    h, w = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * w, rows * (h + caption_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x, y = (i % columns) * w, (i // columns) * (h + caption_height)
        sheet.paste(Image.fromarray(tile), (x, y))
        draw.text((x + 2, y + h + 1), caption[: w // 6], fill="black")
    return np.asarray(sheet)
