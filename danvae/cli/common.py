"""What every ``danvae`` subcommand shares: the one-line error, reading an image folder and its
defect masks (reporting what it skips), the --quiet / --log-level options and the help format."""
from __future__ import annotations

import argparse
import copy
import logging
import sys

from danvae.data.labelled import LabelledFolder, load_folder


class CommandError(Exception):
    """A one-line message for the user; no traceback."""


def read_folder(data_dir: str, size: int, channels: int, *, masks: bool = False, progress: bool = True
                ) -> LabelledFolder:
    """The folder's images, labels and (``masks``) defect masks; each skipped image and unusable
    mask named on stderr."""
    data = load_folder(data_dir, size, channels, masks=masks, progress=progress)
    for path, reason in data.skipped:
        print(f"danvae: skipped {path}: {reason}", file=sys.stderr)
    if len(data.images) == 0:
        raise CommandError(f"none of the images under {data_dir} could be read")
    for path in data.unusable_masks:
        print(f"danvae: mask {path} is empty or unreadable; its image trains without a mask", file=sys.stderr)
    return data


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none (None, a False flag)."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and self._has_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        return (super()._get_help_string(action) or "") if self._has_default(action) else action.help or ""

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


def add_model_command(subparsers: argparse._SubParsersAction, name: str, parent: argparse.ArgumentParser, help: str,
                      description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand that uses a trained detector: its parser, with ``--model`` to read it from."""
    parser = subparsers.add_parser(name, parents=[parent], formatter_class=DefaultsHelpFormatter, help=help,
                                   description=description)
    parser.add_argument("--model", required=True,
                        help="a run folder written by 'danvae train', or an MLflow URI such as models:/NAME@champion")
    return parser
