"""What every ``danvae`` subcommand shares: the one-line error, reading an image folder and its
defect masks (reporting what it skips), and the --quiet / --log-level options."""
from __future__ import annotations

import argparse
import copy
import logging
import sys

import numpy as np
import pandas as pd

from danvae.data.folders import Packed, discover, pack, scan
from danvae.data.masks import find_masks, has_mask, load_masks


class CommandError(Exception):
    """A one-line message for the user; no traceback."""


def read_folder(data_dir: str, size: int, channels: int, progress: bool = True) -> Packed:
    refused: list[tuple[str, str]] = []
    packed = pack(discover(data_dir, refused), size, channels, progress=progress)
    for path, reason in refused + packed.skipped:
        print(f"danvae: skipped {path}: {reason}", file=sys.stderr)
    if len(packed.images) == 0:
        raise CommandError(f"none of the images under {data_dir} could be read")
    return packed


def read_masks(data_dir: str, packed, size: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Defect masks of the packed anomalies (``masks/<defect>/`` or MVTec's ``ground_truth/``),
    N×size×size, and which rows have one (normals do: nothing is defective). (None, None)
    when the folder holds no mask; a mask that cannot be read is reported and left out."""
    found = scan(data_dir)
    mask_of = dict(zip(found.found["path"], find_masks(found)))
    rows = pd.DataFrame({"mask_path": [mask_of.get(p, "") for p in packed.table["path"]]})
    listed = has_mask(rows)
    if not listed.any():
        return None, None
    masks = load_masks("", rows, size)  # the mask paths are whole paths: nothing to join them to
    usable = listed & masks.any(axis=(1, 2))
    for path in rows["mask_path"][listed & ~usable]:
        print(f"danvae: mask {path} is empty or unreadable; its image trains without a mask", file=sys.stderr)
    return masks, usable | (packed.table["label"] == "normal").to_numpy()


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none (None, a False flag)."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and self._has_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        return super()._get_help_string(action) if self._has_default(action) else action.help or ""

    @staticmethod
    def _has_default(action: argparse.Action) -> bool:
        return not any(action.default is v for v in (argparse.SUPPRESS, None, False))


def output_options() -> argparse.ArgumentParser:
    """A parent parser: --quiet and --log-level, accepted by every subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--quiet", action="store_true", help="no progress bars; only errors and the result")
    p.add_argument("--log-level", default="WARNING", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="what the library logs to stderr")
    return p


def apply_output_options(args: argparse.Namespace) -> None:
    logging.basicConfig(level=getattr(logging, getattr(args, "log_level", "WARNING")), stream=sys.stderr,
                        format="danvae: %(levelname)s %(name)s: %(message)s")
