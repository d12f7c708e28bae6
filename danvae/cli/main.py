"""The ``danvae`` command: generate surfaces, train, score and evaluate without DVC.

    danvae generate data/surfaces --normal 400 --anomaly 40
    danvae train --data data/surfaces --model danvae --out runs/a
    danvae score --model runs/a --data data/surfaces --out scores.csv
    danvae predict --model runs/a --data new-images/ --out predictions/
    danvae export --model runs/a --out model.onnx
    danvae evaluate --scores scores.csv --out metrics.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from danvae.cli.common import (CommandError, DefaultsHelpFormatter, add_model_command, apply_output_options,
                               output_options, read_folder)
from danvae.cli.export import add_export_parser
from danvae.cli.predict import add_predict_parser
from danvae.cli.promote import add_promote_parser
from danvae.cli.train import add_train_parser
from danvae.data.folders import DataError
from danvae.data.nuisance import factor_values
from danvae.evaluation.metrics import EvaluationError, evaluate_scores
from danvae.images import ImageError
from danvae.mlops.tracking import TrackingError
from danvae.train import TrainingDiverged

USER_ERRORS = (DataError, ImageError, EvaluationError, TrainingDiverged, TrackingError, FileNotFoundError, ValueError)


def cmd_generate(args: argparse.Namespace) -> None:
    from danvae.data.synthetic import generate_surfaces

    truth = generate_surfaces(args.out, n_normal=args.normal, n_anomaly=args.anomaly, size=args.size,
                              dark_share=args.dark_share, seed=args.seed, difficulty=args.difficulty)
    print(f"wrote {len(truth)} images to {args.out} ({int((truth['label'] == 'anomaly').sum())} anomalies)")


def cmd_score(args: argparse.Namespace) -> None:
    from danvae.mlops.registry import load_detector

    on_dask = args.workers > 1 or args.dask_address
    if on_dask and not Path(args.model).is_dir():
        raise CommandError("--workers/--dask-address need --model to be a run folder, which every worker loads")
    det = load_detector(args.model)
    packed = read_folder(args.data, det.image_size, det.channels, progress=not args.quiet)
    from danvae.dask_scoring import score_anywhere

    table, _ = score_anywhere(det, args.model, packed.images, workers=args.workers, address=args.dask_address,
                              progress=not args.quiet, nuisance=factor_values(packed.table, det.nuisance))
    from danvae.scoring import per_file

    out = per_file(packed.table, table)
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
    common = output_options()
    defaults = DefaultsHelpFormatter

    g = sub.add_parser("generate", parents=[common], formatter_class=defaults,
                       help="write synthetic surface images with defects")
    g.add_argument("out")
    g.add_argument("--normal", type=int, default=400)
    g.add_argument("--anomaly", type=int, default=40)
    g.add_argument("--size", type=int, default=64)
    g.add_argument("--dark-share", type=float, default=0.15)
    g.add_argument("--difficulty", default="default", choices=["easy", "default", "hard"])
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_generate)

    add_train_parser(sub, common)

    s = add_model_command(sub, "score", common, "score every image in a folder")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--workers", type=int, default=1,
                   help="more than 1: score on a Dask LocalCluster of that many processes (the same table)")
    s.add_argument("--dask-address", default=None, help="score on the running Dask scheduler at this address")
    s.set_defaults(func=cmd_score)

    e = sub.add_parser("evaluate", parents=[common], formatter_class=defaults, help="metrics from a score CSV")
    e.add_argument("--scores", required=True)
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_evaluate)
    add_predict_parser(sub, common)
    add_promote_parser(sub, common)
    add_export_parser(sub, common)
    return p


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"invalid {'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: what a relaunch (danvae train --nproc) repeats
    apply_output_options(args)
    try:
        return args.func(args) or 0
    except (CommandError, *USER_ERRORS) as exc:
        print(f"danvae: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("danvae: interrupted; a training run resumes from its last checkpoint", file=sys.stderr)
        return 130

