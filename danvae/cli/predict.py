"""``danvae predict``: decisions, normalised scores and heatmap overlays for a folder of images.

    danvae predict --model runs/a --data DIR --out predictions/        # overlays of flagged images
    danvae predict --model models:/danvae-surface@champion --data DIR --out predictions/ --all

Writes ``predictions.csv`` (per image: the decision, the score normalised to [0, 1] with the
threshold at 0.5, the raw score and every score kind), ``overlays/<n>_<name>.png`` (image,
heatmap, blend) for the flagged images (every image with ``--all``), and a contact sheet of
them, most anomalous first: ``contact_sheet.png`` and ``index.html``.
"""
from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from danvae.cli.common import add_model_command, read_folder
from danvae.data.nuisance import factor_values

SHEET_TILES = 64


def _overlay_name(i: int, path: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).stem)[:60]
    return f"{i:05d}_{stem}.png"


def write_index(out: Path, shown: pd.DataFrame) -> None:
    rows = "\n".join(
        f"<tr><td><img src=\"overlays/{html.escape(r.overlay)}\" height=\"96\"></td><td>{html.escape(r.path)}</td>"
        f"<td>{r.normalized_score:.3f}</td><td>{r.score:.4g}</td><td>{'anomaly' if r.is_anomaly else 'normal'}</td></tr>"
        for r in shown.itertuples())
    out.write_text("<!doctype html><meta charset=\"utf-8\"><title>danvae predictions</title>\n"
                   "<table><tr><th>image · heatmap · blend</th><th>path</th><th>normalised score</th>"
                   f"<th>score</th><th>decision</th></tr>\n{rows}\n</table>\n")


def cmd_predict(args: argparse.Namespace) -> None:
    from danvae.evaluation.overlay import contact_sheet, overlay
    from danvae.mlops.registry import load_detector

    det = load_detector(args.model)
    packed = read_folder(args.data, det.image_size, det.channels, progress=not args.quiet)
    table, maps = det.score_table(packed.images, heatmaps=True, progress=not args.quiet,
                                  nuisance=factor_values(packed.table, det.nuisance))
    out = Path(args.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    result = pd.concat([packed.table[["path", "label"]].reset_index(drop=True), table], axis=1)
    first = ["path", "label", "is_anomaly", "normalized_score", "score", "brightness"]
    result = result[first + [c for c in result.columns if c not in first]]
    shown = result.index[result["is_anomaly"].to_numpy() | args.all]
    result["overlay"] = ""
    for i in shown:
        name = _overlay_name(int(i), result.at[i, "path"])
        Image.fromarray(overlay(packed.images[i], maps[i])).save(out / "overlays" / name)
        result.at[i, "overlay"] = name
    result.to_csv(out / "predictions.csv", index=False)
    ranked = result.loc[shown].sort_values("score", ascending=False)
    if len(ranked):
        top = ranked.head(SHEET_TILES)
        tiles = [np.asarray(Image.open(out / "overlays" / name)) for name in top["overlay"]]
        captions = [f"{s:.2f} {Path(p).name}" for s, p in zip(top["normalized_score"], top["path"])]
        Image.fromarray(contact_sheet(tiles, captions)).save(out / "contact_sheet.png")
    write_index(out / "index.html", ranked)
    flagged = int(result["is_anomaly"].sum())
    print(f"predicted {len(result)} images → {out} ({flagged} flagged; {len(ranked)} overlays"
          f"{', contact_sheet.png' if len(ranked) else ''}, index.html)", file=sys.stderr if args.quiet else sys.stdout)


def add_predict_parser(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
                       ) -> argparse.ArgumentParser:
    p = add_model_command(subparsers, "predict", parent,
                          "decisions, normalised scores and heatmap overlays for a folder", __doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the image folder (any layout; normal/ and anomaly/ give labels)")
    p.add_argument("--out", required=True, help="the folder for predictions.csv, overlays/ and the contact sheet")
    p.add_argument("--all", action="store_true", help="an overlay for every image, not only the flagged ones")
    p.set_defaults(func=cmd_predict)
    return p
