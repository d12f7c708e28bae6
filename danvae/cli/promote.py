"""``danvae promote``: gate a registered version against the champion and move the alias.

    danvae promote --name danvae --version 3 --data data/test-surfaces
    danvae promote --name danvae --version challenger --data DIR --tolerance 0.01 --dark-tolerance 0.02
    danvae promote --name danvae --version 3 --data DIR --force --reason "hotfix for line 4 lighting"

DIR is laid out like the other commands' data folders: ``normal/`` and ``anomaly/<defect>/``.
Prints the decision as JSON. Exit codes: 0 the version is (or already was) the champion;
3 the gate refused it (the last line names the rule that refused); 2 the gate could not
run (a one-line message).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


REFUSED_EXIT_CODE = 3


class PromoteCommandError(ValueError):
    """A one-line failure for the user (a ValueError, so ``danvae``'s main prints it without a traceback)."""


def _validation_passed(path: str | None) -> tuple[bool | None, str | None]:
    """The report's verdict, or None (not checked) when no report is given."""
    if path is None:
        return None, None
    p = Path(path)
    if not p.is_file():
        raise PromoteCommandError(f"validation report {p} does not exist: run the validate stage first")
    try:
        report = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PromoteCommandError(f"validation report {p} is not readable JSON: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("success"), bool):
        raise PromoteCommandError(f"validation report {p} has no boolean 'success' field")
    return report["success"], str(p)


def _gate_images(uri: str, data_dir: str):
    """The labelled images of ``data_dir``, decoded at the challenger's image size, their labels
    and (for a model trained on a recorded nuisance factor) that factor from ``nuisance.csv``."""
    import mlflow

    from danvae.data.folders import discover, pack
    from danvae.data.nuisance import BRIGHTNESS, factor_values

    info = mlflow.models.get_model_info(uri)
    meta = (info.metadata or {}).get("danvae", {})
    size, channels = int(meta.get("image_size", 64)), int(meta.get("channels", 3))
    found = discover(data_dir)
    found = found[found["label"].isin(["normal", "anomaly"])].reset_index(drop=True)
    if found.empty:
        raise PromoteCommandError(f"no labelled images under {data_dir}: put them in normal/ and anomaly/<defect>/")
    packed = pack(found, size, channels, progress=False)
    for path, why in packed.skipped:
        print(f"danvae: skipped {path}: {why}", file=sys.stderr)
    labels = (packed.table["label"] == "anomaly").to_numpy()
    if not labels.any() or labels.all():
        raise PromoteCommandError(f"{data_dir} needs both normal and anomalous images to compare models")
    return packed.images, labels, factor_values(packed.table, meta.get("nuisance", BRIGHTNESS))


def cmd_promote(args: argparse.Namespace) -> int:
    from danvae.mlops.gate import promote
    from danvae.mlops.registry import RegistryError
    from danvae.mlops.tracking import configure_tracking

    if args.force and not (args.reason or "").strip():
        raise PromoteCommandError("--force needs --reason \"...\" (it is recorded on the model version)")
    passed, report = _validation_passed(args.validation_report)
    configure_tracking()
    try:
        version = str(args.version)
        uri = f"models:/{args.name}/{version}" if version.isdigit() else f"models:/{args.name}@{version}"
        images, labels, nuisance = _gate_images(uri, args.data)
        decision = promote(None, args.name, version, images, labels, auroc_tolerance=args.tolerance,
                           dark_tolerance=args.dark_tolerance, validation_passed=passed, min_auroc=args.min_auroc,
                           force=args.force, reason=args.reason, nuisance=nuisance)
    except RegistryError as exc:
        raise PromoteCommandError(str(exc)) from exc
    except Exception as exc:  # an unknown name/version from get_model_info, an unreachable server, ...
        from mlflow.exceptions import MlflowException

        if isinstance(exc, MlflowException):
            raise PromoteCommandError(f"cannot read model '{args.name}' version {args.version}: "
                                      f"{' '.join(str(exc).split())[:240]}") from exc
        raise
    out = decision.to_dict()
    out["validation_report"] = report
    print(json.dumps(out, indent=2, default=str))
    if decision.promoted:
        where = f"champion is now version {decision.version} of '{args.name}'"
    elif decision.champion_version:
        where = f"champion stays version {decision.champion_version} of '{args.name}'"
    else:
        where = f"'{args.name}' still has no champion"
    print(f"{decision.decision}: {where} ({decision.reason})", file=sys.stderr)
    return 0 if decision.promoted else REFUSED_EXIT_CODE


def add_promote_parser(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser | None = None
                       ) -> argparse.ArgumentParser:
    """Add ``promote`` to ``danvae``'s subcommands (``sub = p.add_subparsers(...)``)."""
    from danvae.cli.common import DefaultsHelpFormatter
    from danvae.config import PromoteConfig

    defaults = PromoteConfig()
    p = subparsers.add_parser("promote", parents=[parent] if parent else [],
                              formatter_class=DefaultsHelpFormatter,
                              help="gate a registered model version and move the 'champion' alias",
                              description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--version", required=True, help="version number, or an alias such as 'challenger'")
    p.add_argument("--data", required=True, help="labelled test images: DIR/normal and DIR/anomaly/<defect>")
    p.add_argument("--tolerance", type=float, default=defaults.auroc_tolerance,
                   help="how much worse than the champion the overall AUROC may be")
    p.add_argument("--dark-tolerance", type=float, default=defaults.dark_tolerance,
                   help="how much worse the darkest-quintile AUROC may be")
    p.add_argument("--min-auroc", type=float, default=defaults.min_auroc,
                   help="AUROC floor for the first champion")
    p.add_argument("--validation-report", default=None,
                   help="validate stage's JSON report; promotion needs its 'success' to be true")
    p.add_argument("--force", action="store_true", help="promote whatever the gate says (needs --reason)")
    p.add_argument("--reason", default=None, help="why a promotion is forced; recorded as a tag")
    p.set_defaults(func=cmd_promote)
    return p
