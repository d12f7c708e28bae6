"""``danvae train``: an explicit training run in a folder of its own.

    danvae train --data DIR --out runs/a                 # refuses runs/a if it already holds a run
    danvae train --data DIR --out runs/a --resume        # continue it: the same settings, checked
    danvae train --data DIR --out runs/a --overwrite     # start afresh in it

The settings of a run are written to ``<out>/run_config.json`` before its first epoch, so a
resume can name what differs instead of loading weights that do not fit.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, get_args

from danvae.cli.common import CommandError, DefaultsHelpFormatter, read_folder
from danvae.config import Likelihood, ModelConfig, ModelName, ScoreConfig, ScoreKind, SyntheticDefectConfig, TrainConfig
from danvae.data.nuisance import BRIGHTNESS, NUISANCE_FILE, factor_values

RUN_CONFIG = "run_config.json"
# What a run writes into its folder: all that --overwrite removes (nothing else there is touched).
RUN_FILES = (RUN_CONFIG, "detector.pt", "detector.json", "history.json", "checkpoints", "torchrun")


class RunFolderError(ValueError):
    """The --out folder and --resume/--overwrite do not agree (one line, no traceback)."""


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a resumed run must share with the run it continues."""
    train = TrainConfig().model_dump()
    synthetic = SyntheticDefectConfig().model_dump()
    synthetic["share"] = args.synthetic_share
    train.update(epochs=args.epochs, warmup_epochs=min(args.warmup_epochs, args.epochs), sup_ratio=args.sup_ratio,
                 seed=args.seed, batch_size=args.batch_size, device=args.device, lr=args.lr, beta_x=args.beta_x,
                 beta_y=args.beta_y, synthetic=synthetic)
    nuisance = {} if args.nuisance == BRIGHTNESS else {"nuisance": args.nuisance}  # runs before the flag: unchanged
    return {
        "data": str(Path(args.data).resolve()), "image_size": args.image_size, "channels": args.channels, **nuisance,
        "model": ModelConfig(name=args.model, zx_dim=args.zx_dim, zy_dim=args.zy_dim,
                             likelihood=args.likelihood).model_dump(),
        "train": TrainConfig(**train).model_dump(), "score": ScoreConfig(kind=args.score_kind).model_dump(),
    }


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old → new`` for every setting that differs, in a stable order."""
    a, b = _flat(old), _flat(json.loads(json.dumps(new)))
    return [f"{k} {a.get(k, '(unset)')} → {b.get(k, '(unset)')}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_FILES)


def check_run_folder(out: Path, settings: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Refuse (:class:`RunFolderError`) what ``out`` and the flags do not allow; writes nothing."""
    if not holds_run(out):
        if resume:
            raise RunFolderError(f"--resume: {out} holds no training run to continue")
        return
    if not (resume or overwrite):
        raise RunFolderError(f"{out} already holds a training run: pass --resume to continue it "
                             f"(same settings) or --overwrite to start afresh")
    if resume:
        saved = out / RUN_CONFIG
        if not saved.exists():
            raise RunFolderError(f"--resume: {out} has no {RUN_CONFIG} (a run from an older danvae), so its "
                                 f"settings cannot be checked; use --overwrite to start afresh")
        differ = differences(json.loads(saved.read_text()), settings)
        if differ:
            more = f" (and {len(differ) - 6} more)" if len(differ) > 6 else ""
            raise RunFolderError(f"--resume: the settings differ from the run in {out}: {'; '.join(differ[:6])}"
                                 f"{more}; use --overwrite to start afresh")


def start_run_folder(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Clear the previous run's files (``overwrite``; nothing else in ``out``), then record the settings."""
    if overwrite:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_CONFIG).write_text(json.dumps(settings, indent=2))


def worker_argv(argv: list[str]) -> list[str]:
    """The command each torchrun process runs: this one without --nproc and --overwrite (the
    launcher has prepared the folder), continuing the run it set up (--resume)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not (a.startswith("--nproc=") or a in ("--overwrite", "--resume")):
            out.append(a)
    return [*out, "--resume"]


def cmd_train(args: argparse.Namespace) -> int:
    from danvae.detector import Detector
    from danvae.distributed import launch, requested_world

    settings = run_settings(args)
    out = Path(args.out)
    world = requested_world()
    if world.is_main:  # under torchrun the other ranks wait for rank 0 as they join its process group
        check_run_folder(out, settings, args.resume, args.overwrite)
    data = read_folder(args.data, args.image_size, args.channels, masks=True,
                       progress=not args.quiet and world.is_main)
    if not (data.table["label"] == "normal").any():
        raise CommandError(f"no normal images under {args.data}: put them in {Path(args.data) / 'normal'}/")
    if world.is_main:
        start_run_folder(out, settings, args.overwrite)
    if args.nproc > 1 and world.size == 1:
        code = launch("danvae.cli", worker_argv(args.argv), args.nproc, out / "torchrun")
        if code != 0:
            raise CommandError(f"distributed training ({args.nproc} processes) failed with exit code {code}; "
                               f"rerun the same command with --resume to continue from the last checkpoint")
        return 0
    det = Detector(ModelConfig(**settings["model"]), image_size=args.image_size, channels=args.channels,
                   train=TrainConfig(**settings["train"]), score=ScoreConfig(**settings["score"]),
                   nuisance=args.nuisance)
    det.fit(data.images, data.is_anomaly, run_dir=out, masks=data.masks, has_mask=data.has_mask,
            progress=False if args.quiet else None, nuisance=factor_values(data.table, args.nuisance))
    if not world.is_main:
        return 0
    n_masks = 0 if data.has_mask is None else int((data.has_mask & data.is_anomaly).sum())
    resumed = f", resumed from epoch {det.resumed_from_epoch + 1}" if det.resumed_from_epoch else ""
    processes = f" in {world.size} processes" if world.size > 1 else ""
    print(f"trained {args.model} on {len(data.images)} images ({n_masks} defect masks){resumed}{processes} → {out} "
          f"(score {det.score_kind}, threshold {det.threshold:.4g} by {det.threshold_method})",
          file=sys.stderr if args.quiet else sys.stdout)
    return 0


def add_train_parser(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
                     ) -> argparse.ArgumentParser:
    train, model, synthetic = TrainConfig(), ModelConfig(), SyntheticDefectConfig()
    t = subparsers.add_parser("train", parents=[parent], formatter_class=DefaultsHelpFormatter,
                              help="train a detector on DIR/normal and DIR/anomaly/<defect>",
                              description="Train a detector on DIR/normal/** and DIR/anomaly/<defect>/** (defect "
                                          "masks, if any, in DIR/masks/<defect>/ or the MVTec AD layout).")
    t.add_argument("--data", required=True, help="the image folder")
    t.add_argument("--out", required=True, help="the run folder (refused if it holds a run, unless --resume or "
                                                "--overwrite)")
    again = t.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint; "
                                                             "the settings must be the same")
    again.add_argument("--overwrite", action="store_true", help="delete the run in --out and start afresh")
    t.add_argument("--model", default=model.name, choices=list(get_args(ModelName)))
    t.add_argument("--nuisance", default=BRIGHTNESS,
                   help=f"the nuisance factor: brightness, or a column of DIR/{NUISANCE_FILE} (e.g. exposure)")
    t.add_argument("--epochs", type=int, default=train.epochs)
    t.add_argument("--warmup-epochs", type=int, default=train.warmup_epochs)
    t.add_argument("--batch-size", type=int, default=train.batch_size)
    t.add_argument("--lr", type=float, default=train.lr, help="learning rate (cosine schedule down to lr/20)")
    t.add_argument("--beta-x", type=float, default=train.beta_x, help="weight of the KL of z_x")
    t.add_argument("--beta-y", type=float, default=train.beta_y, help="weight of the KL of z_y")
    t.add_argument("--likelihood", default=model.likelihood, choices=list(get_args(Likelihood)),
                   help="decoder variance")
    t.add_argument("--synthetic-share", type=float, default=synthetic.share,
                   help="share of normal images that get a synthetic defect (spatial models)")
    t.add_argument("--score-kind", default=ScoreConfig().kind, choices=list(get_args(ScoreKind)),
                   help="the decision score; auto = the model's default unless validation clearly prefers another")
    t.add_argument("--image-size", type=int, default=64, choices=[32, 64, 128, 256])
    t.add_argument("--channels", type=int, default=3, choices=[1, 3])
    t.add_argument("--zx-dim", type=int, default=model.zx_dim)
    t.add_argument("--zy-dim", type=int, default=model.zy_dim)
    t.add_argument("--sup-ratio", type=float, default=train.sup_ratio,
                   help="share of images whose brightness label the model sees")
    t.add_argument("--device", default=train.device, choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=int, default=train.seed)
    t.add_argument("--nproc", type=int, default=1,
                   help="training processes on this host (torch DDP under torchrun: gloo on CPU, nccl on CUDA, "
                        "one GPU each); the global batch stays --batch-size")
    t.set_defaults(func=cmd_train)
    return t
