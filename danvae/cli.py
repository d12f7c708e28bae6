"""The ``danvae`` command: generate surfaces, train, score and evaluate without DVC.

    danvae generate data/surfaces --normal 400 --anomaly 40
    danvae train --data data/surfaces --model danvae --out runs/a
    danvae score --model runs/a --data data/surfaces --out scores.csv
    danvae evaluate --scores scores.csv --out metrics.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
from pydantic import ValidationError

from danvae.cli_promote import add_promote_parser
from danvae.config import ModelConfig, ModelName, ScoreConfig, TrainConfig
from danvae.data.folders import DataError, discover, pack, scan
from danvae.data.masks import find_masks, has_mask, load_masks
from danvae.detector import Detector
from danvae.evaluate import EvaluationError, evaluate_scores
from danvae.images import ImageError
from danvae.tracking import TrackingError
from danvae.train import TrainingDiverged

USER_ERRORS = (DataError, ImageError, EvaluationError, TrainingDiverged, TrackingError, FileNotFoundError, ValueError)


class CommandError(Exception):
    """A one-line message for the user; no traceback."""


def _read_folder(data_dir: str, size: int, channels: int):
    refused: list[tuple[str, str]] = []
    packed = pack(discover(data_dir, refused), size, channels, progress=True)
    for path, reason in refused + packed.skipped:
        print(f"danvae: skipped {path}: {reason}", file=sys.stderr)
    if len(packed.images) == 0:
        raise CommandError(f"none of the images under {data_dir} could be read")
    return packed


def _read_masks(data_dir: str, packed, size: int) -> tuple[np.ndarray | None, np.ndarray | None]:
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


def cmd_generate(args: argparse.Namespace) -> None:
    from danvae.data.synthetic import generate_surfaces

    truth = generate_surfaces(args.out, n_normal=args.normal, n_anomaly=args.anomaly, size=args.size,
                              dark_share=args.dark_share, seed=args.seed, difficulty=args.difficulty)
    print(f"wrote {len(truth)} images to {args.out} ({int((truth['label'] == 'anomaly').sum())} anomalies)")


def cmd_train(args: argparse.Namespace) -> None:
    model_cfg = ModelConfig(name=args.model, zx_dim=args.zx_dim, zy_dim=args.zy_dim)
    train_cfg = TrainConfig(epochs=args.epochs, warmup_epochs=min(args.warmup_epochs, args.epochs),
                            sup_ratio=args.sup_ratio, seed=args.seed, batch_size=args.batch_size, device=args.device)
    packed = _read_folder(args.data, args.image_size, args.channels)
    labels = packed.table["label"]
    if not (labels == "normal").any():
        raise CommandError(f"no normal images under {args.data}: put them in {Path(args.data) / 'normal'}/")
    masks, known = _read_masks(args.data, packed, args.image_size)
    det = Detector(model_cfg, image_size=args.image_size, channels=args.channels, train=train_cfg, score=ScoreConfig())
    det.fit(packed.images, (labels == "anomaly").to_numpy(), run_dir=args.out, masks=masks, has_mask=known)
    n_masks = 0 if known is None else int((known & (labels == "anomaly").to_numpy()).sum())
    print(f"trained {args.model} on {len(packed.images)} images ({n_masks} defect masks) → {args.out} "
          f"(score {det.score_kind}, threshold {det.threshold:.4g} by {det.threshold_method})")


def cmd_score(args: argparse.Namespace) -> None:
    from danvae.registry import load_detector

    det = load_detector(args.model)
    packed = _read_folder(args.data, det.image_size, det.channels)
    table = det.score_table(packed.images)
    out = pd.concat([packed.table[["path", "label"]], table], axis=1)
    ordered = ["path", "label", "brightness", "score", "is_anomaly"]
    out = out[ordered + [c for c in out.columns if c not in ordered]]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    print(f"scored {len(out)} images → {args.out} ({int(out['is_anomaly'].sum())} flagged)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    if not Path(args.scores).exists():
        raise CommandError(f"score file {args.scores} does not exist: make it with 'danvae score'")
    metrics = evaluate_scores(pd.read_csv(args.scores))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(metrics, indent=2))
    print(json.dumps({k: metrics[k] for k in ("auroc", "auprc", "f1", "auroc_darkest", "brightness_spearman_normal")
                      if k in metrics}))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="danvae", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write synthetic surface images with defects")
    g.add_argument("out")
    g.add_argument("--normal", type=int, default=400)
    g.add_argument("--anomaly", type=int, default=40)
    g.add_argument("--size", type=int, default=64)
    g.add_argument("--dark-share", type=float, default=0.15)
    g.add_argument("--difficulty", default="default", choices=["easy", "default", "hard"])
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="train a detector on DIR/normal and DIR/anomaly/<defect>")
    t.add_argument("--data", required=True)
    t.add_argument("--model", default="danvae", choices=list(get_args(ModelName)))
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    t.add_argument("--warmup-epochs", type=int, default=TrainConfig().warmup_epochs)
    t.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    t.add_argument("--image-size", type=int, default=64)
    t.add_argument("--channels", type=int, default=3, choices=[1, 3])
    t.add_argument("--zx-dim", type=int, default=ModelConfig().zx_dim)
    t.add_argument("--zy-dim", type=int, default=ModelConfig().zy_dim)
    t.add_argument("--sup-ratio", type=float, default=TrainConfig().sup_ratio)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="score every image in a folder")
    s.add_argument("--model", required=True,
                   help="a run folder written by 'danvae train', or an MLflow URI such as models:/NAME@champion")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_score)

    e = sub.add_parser("evaluate", help="metrics from a score CSV")
    e.add_argument("--scores", required=True)
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_evaluate)
    add_promote_parser(sub)
    return p


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"invalid {'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CommandError, *USER_ERRORS) as exc:
        print(f"danvae: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("danvae: interrupted; a training run resumes from its last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
