"""Detection benchmark: image AUROC, darkest-quintile AUROC, dark false alarms, brightness
bias, disentanglement and pixel AUROC, per model variant, seed and difficulty, on 3,000
freshly generated test images (embedded generator, 4 materials, dark tail).

    python benchmarks/detection.py --variants danvae vae danvae-global --seeds 0 1 2 \\
        --difficulty default --epochs 30 --out benchmarks/results/detection.jsonl
    python benchmarks/detection.py --lofo --variants danvae --seeds 0   # leave one defect family out
    python benchmarks/detection.py --world heldout --variants danvae vae --seeds 0 1   # unseen world
    python benchmarks/detection.py --summarize benchmarks/results/detection.jsonl

Train, validation and test images come from different generator seeds. Each run appends
one JSON line; ``--summarize`` prints the mean ± sd over seeds as a markdown table.

Why 3,000 test images (2,100 normal, 900 defective; 1,000 until session 18): the darkest
quintile of 1,000 images holds about 200, whose AUROC near 0.8 has a standard error of
about 0.037 (Hanley–McNeil), more than the differences being measured; of 3,000, about
0.021. ``--save-dir`` keeps each trained detector and ``--load-dir`` scores saved ones on
another test set without training again; ``--test-seed`` scores on another seed's test set.

``--world heldout`` draws every set from ``heldout_surfaces.py`` instead: five materials, five
defect kinds, a darker tail and a camera that no part of the project was built or tuned on
(train, validation and test all from that world, as a user with a new product would have).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from danvae import Detector
from danvae.config import LightingConfig, ModelConfig, ScoreConfig, SyntheticDefectConfig, TrainConfig
from danvae.data.synthetic import DEFECTS, MATERIALS, as_difficulty, render_surface, sample_lighting
from danvae.evaluation.disentanglement import disentanglement_metrics
from danvae.evaluation.metrics import evaluate_scores, pixel_auroc
from heldout_surfaces import HELDOUT_DEFECTS, HELDOUT_MATERIALS, render_heldout, sample_heldout_lighting

# name -> (model config, train overrides, use labelled anomalies)
VARIANTS: dict[str, tuple[dict, dict, bool]] = {
    "danvae": ({}, {}, True),
    "danvae-nolabels": ({}, {}, False),
    "danvae-unlabelled": ({}, {}, False),  # no labelled anomaly in validation either (see UNLABELLED)
    "danvae-nosynthetic": ({}, {"synthetic": SyntheticDefectConfig(share=0.0)}, True),
    "danvae-nohead": ({"head": False}, {}, True),
    "danvae-nodualprior": ({"anomaly_mean": 1e-6}, {}, True),
    "danvae-nolighting": ({}, {"lighting": LightingConfig(share=0.0)}, True),
    "danvae-nodenoise": ({}, {"synthetic": SyntheticDefectConfig(denoise=False)}, True),
    "vae": ({"name": "vae"}, {}, False),
    "dpvae": ({"name": "dpvae"}, {}, True),
    "danvae-global": ({"name": "danvae-global", "zx_dim": 24}, {}, True),
    "vae-global": ({"name": "vae-global", "zx_dim": 24}, {}, False),
}

# Variants that see no labelled anomaly at all, as a user who has none: validation holds
# normals only, so the kept epoch is chosen on them with synthetic defects
# (synthetic.validation_defects; before session 17, the last epoch) and the score kind is the
# default. ``danvae-nolabels`` keeps validation's anomalies (the labels' effect on training alone).
UNLABELLED = {"danvae-unlabelled"}


# the materials and defect families of each world the benchmark draws from
WORLDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "embedded": (MATERIALS, DEFECTS), "heldout": (HELDOUT_MATERIALS, HELDOUT_DEFECTS)}


def make_set(n_normal: int, n_anomaly: int, seed: int, difficulty: str, size: int, dark_share: float,
             defects: tuple[str, ...] = DEFECTS, world: str = "embedded") -> dict:
    """Images, labels, masks, material, defect and lighting, rendered in memory."""
    rng = np.random.default_rng(seed)
    d = as_difficulty(difficulty)
    materials = WORLDS[world][0]
    images, masks, mats, kinds = [], [], [], []
    for i in range(n_normal + n_anomaly):
        defect = None if i < n_normal else defects[rng.integers(len(defects))]
        material = materials[rng.integers(len(materials))]
        if world == "heldout":
            image, mask = render_heldout(rng, size, material, defect, sample_heldout_lighting(rng, dark_share))
        else:
            r = render_surface(rng, size, material, defect, sample_lighting(rng, dark_share), d)
            image, mask = r.image, r.mask
        images.append(image)
        masks.append(mask)
        mats.append(material)
        kinds.append(defect or "")
    kind = np.array(kinds)
    return {"images": np.stack(images), "anomaly": kind != "", "masks": np.stack(masks),
            "material": np.array(mats), "defect": kind}


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    ok = np.isfinite(scores)
    labels, scores = labels[ok], scores[ok]
    return float(roc_auc_score(labels, scores)) if labels.any() and (~labels).any() else None


def _generator_seed(seed: int, difficulty: str, world: str = "embedded") -> int:
    """The generator seed a run's sets are drawn from: +1 training, +2 validation, +3 test."""
    return 1000 * seed + {"easy": 0, "default": 100, "hard": 200}[difficulty] + (500 if world == "heldout" else 0)


def saved_name(variant: str, tag: str, seed: int, difficulty: str, world: str = "embedded") -> str:
    return f"{variant}{'-' + tag if tag else ''}-s{seed}-{difficulty}{'-heldout' if world == 'heldout' else ''}"


def run(variant: str, seed: int, args) -> dict:
    model_kw, train_kw, labelled = VARIANTS[variant]
    world = args.world
    materials, families = WORLDS[world]
    base = _generator_seed(seed, args.difficulty, world)
    test_seed = seed if args.test_seed is None else args.test_seed
    held_out = (args.lofo,) if args.lofo else ()
    seen = tuple(f for f in families if f not in held_out)
    n_train_anom = args.train_anomalies if labelled else 0
    dark = args.dark_share
    train = make_set(args.train_normals, n_train_anom, base + 1, args.difficulty, args.size, dark, seen, world)
    n_val_anom = 0 if variant in UNLABELLED else args.val_anomalies
    val = make_set(args.val_normals, n_val_anom, base + 2, args.difficulty, args.size, dark, seen, world)
    test = make_set(args.test_normals, args.test_anomalies, _generator_seed(test_seed, args.difficulty, world) + 3,
                    args.difficulty, args.size, dark, held_out or families, world)
    model = ModelConfig(**{**model_kw, **json.loads(args.model_json)})
    train_cfg = TrainConfig(epochs=args.epochs, warmup_epochs=min(args.warmup, args.epochs), seed=seed,
                            threads=args.threads, **{**train_kw, **json.loads(args.train_json)})
    seconds: float | None = None
    if args.load_dir:  # a detector saved by an earlier run (--save-dir), scored on this run's test set
        det = Detector.load(args.load_dir / saved_name(variant, args.load_tag, seed, args.difficulty, world))
        if args.recalibrate:  # the score kind, brightness trend and threshold as this code fits them
            det.score_config = ScoreConfig(**{**det.score_config.model_dump(), **json.loads(args.score_json)})
            det.calibrate(val["images"], val["anomaly"])
    else:
        det = Detector(model, image_size=args.size, train=train_cfg, score=ScoreConfig())
        t0 = time.perf_counter()
        det.fit(train["images"], train["anomaly"], masks=train["masks"], val_images=val["images"],
                val_is_anomaly=val["anomaly"], progress=False)
        seconds = round(time.perf_counter() - t0, 1)
    if args.save_dir:
        det.save(args.save_dir / saved_name(variant, args.tag, seed, args.difficulty, world))
    table, maps = det.score_table(test["images"], heatmaps=True)
    labels = test["anomaly"]
    table["label"] = np.where(labels, "anomaly", "normal")
    overall = evaluate_scores(table, "score")
    kinds = {k: _auroc(labels, table[k].to_numpy(float)) for k in table.columns
             if k not in ("brightness", "score", "is_anomaly", "label")}
    per = lambda col, values: {v: _auroc(labels[(test[col] == v) | ~labels], table["score"].to_numpy(float)[(test[col] == v) | ~labels])  # noqa: E731
                               for v in values}
    ent = disentanglement_metrics(det, test["images"], train_images=train["images"][~train["anomaly"]], seed=seed)
    anomalous = labels & test["masks"].any(axis=(1, 2))
    # the same kind without the brightness adjustment of the decision score (score.brightness_adjust off)
    unadjusted = evaluate_scores(table.assign(score=table[det.score_kind]), "score")
    return {
        "variant": variant + (f"[{args.tag}]" if args.tag else ""), "seed": seed,
        "val_history": [h.get("val_auroc") for h in det.history], "world": world, "difficulty": args.difficulty,
        "dark_share": dark, "epochs": args.epochs, "size": args.size,
        "lofo": args.lofo, "test_seed": test_seed, "n_test": int(len(labels)), "n_test_anomalies": int(labels.sum()),
        "score_kind": det.score_kind, "kind_choice": det.kind_choice, "best_epoch": det.best_epoch,
        "val_auroc": det.val_aurocs.get(det.score_kind), "val_interval": det.val_auroc_interval,
        "auroc": overall["auroc"], "auroc_dark": overall["auroc_by_brightness"][0],
        "fpr_dark": overall.get("fpr_darkest"), "rho_normal": overall.get("brightness_spearman_normal"),
        "unadjusted": {"auroc": unadjusted["auroc"], "auroc_dark": unadjusted["auroc_by_brightness"][0],
                       "rho_normal": unadjusted.get("brightness_spearman_normal")},
        "auroc_by_kind": kinds, "auroc_by_material": per("material", materials),
        "auroc_by_defect": per("defect", held_out or families),
        "pixel_auroc": pixel_auroc(maps[anomalous | ~labels], test["masks"][anomalous | ~labels]),
        "r2_zx": ent.get("r2_zx"), "r2_zy": ent.get("r2_zy"), "train_seconds": seconds,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }


def summarize(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows)
    df["lofo"] = df["lofo"].fillna("")
    df["world"] = df["world"].fillna("embedded") if "world" in df else "embedded"
    out = ["| world | difficulty | held-out family | variant | seeds | test images | AUROC | darkest quintile | FPR dark normals | ρ(score, brightness) | pixel AUROC | R² z_x | R² z_y | score kind | train s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ms(s: pd.Series) -> str:
        s = pd.to_numeric(s, errors="coerce").dropna()
        if s.empty:
            return "–"
        return f"{s.mean():.3f}" + (f" ± {s.std(ddof=1):.3f}" if len(s) > 1 else "")

    for (world, diff, lofo, variant), g in df.groupby(["world", "difficulty", "lofo", "variant"], sort=False):
        sizes = "/".join(str(n) for n in sorted(set(g["n_test"])))
        out.append(f"| {world} | {diff} | {lofo or '–'} | {variant} | {len(g)} | {sizes} | {ms(g['auroc'])} | {ms(g['auroc_dark'])} | "
                   f"{ms(g['fpr_dark'])} | {ms(g['rho_normal'])} | {ms(g['pixel_auroc'])} | {ms(g['r2_zx'])} | "
                   f"{ms(g['r2_zy'])} | {', '.join(sorted(set(g['score_kind'])))} | {ms(g['train_seconds'])} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["danvae"], choices=sorted(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--difficulty", default="default", choices=["easy", "default", "hard"])
    ap.add_argument("--world", default="embedded", choices=sorted(WORLDS),
                    help="the surfaces every set is drawn from: the embedded generator or heldout_surfaces.py")
    ap.add_argument("--lofo", default=None, choices=DEFECTS + HELDOUT_DEFECTS,
                    help="hold this defect family (of the world's) out of training")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--dark-share", type=float, default=None, help="share of dark images (default: 0.15 "
                    "embedded, 0.2 heldout)")
    ap.add_argument("--train-normals", type=int, default=480)
    ap.add_argument("--train-anomalies", type=int, default=48)
    ap.add_argument("--val-normals", type=int, default=160)
    ap.add_argument("--val-anomalies", type=int, default=60)
    ap.add_argument("--test-normals", type=int, default=2100)
    ap.add_argument("--test-anomalies", type=int, default=900)
    ap.add_argument("--test-seed", type=int, default=None, help="score on the test set of this seed instead of the "
                    "run's own (with --load-dir: is a seed's low figure its detector's or its test set's?)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model-json", default="{}", help="extra ModelConfig fields, e.g. '{\"zx_dim\": 16}'")
    ap.add_argument("--train-json", default="{}", help="extra TrainConfig fields, e.g. '{\"anomaly_repeats\": 4}'")
    ap.add_argument("--tag", default="", help="a label stored with each result")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/detection.jsonl"))
    ap.add_argument("--summarize", type=Path, default=None)
    ap.add_argument("--save-dir", type=Path, default=None, help="also save each trained detector under this folder")
    ap.add_argument("--load-dir", type=Path, default=None,
                    help="score detectors saved there by --save-dir instead of training (train s: none)")
    ap.add_argument("--load-tag", default="", help="the --tag the loaded detectors were saved under")
    ap.add_argument("--score-json", default="{}", help="with --recalibrate: ScoreConfig fields to change from the "
                                                       "saved ones, e.g. '{\"trend_relit_copies\": 4}'")
    ap.add_argument("--recalibrate", action="store_true", help="with --load-dir: calibrate the loaded detectors "
                    "again on this run's validation set (a change of calibration, measured without retraining)")
    args = ap.parse_args()
    if args.dark_share is None:
        args.dark_share = 0.2 if args.world == "heldout" else 0.15
    if args.lofo and args.lofo not in WORLDS[args.world][1]:
        ap.error(f"--lofo {args.lofo} is not a defect family of the {args.world} world: {', '.join(WORLDS[args.world][1])}")
    if args.summarize:
        print(summarize(args.summarize))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for variant in args.variants:
            result = run(variant, seed, args)
            with args.out.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
            print(f"{variant} seed {seed} {args.world} {args.difficulty}{' lofo ' + args.lofo if args.lofo else ''}: "
                  f"AUROC {result['auroc']:.3f} (dark {result['auroc_dark'] or float('nan'):.3f}, "
                  f"{result['score_kind']}), pixel {result['pixel_auroc'] or float('nan'):.3f}, "
                  f"R² z_x {result['r2_zx'] if result['r2_zx'] is None else round(result['r2_zx'], 3)}, "
                  f"{result['train_seconds']} s; kinds " +
                  ", ".join(f"{k} {v:.3f}" for k, v in result["auroc_by_kind"].items() if v is not None), flush=True)


if __name__ == "__main__":
    main()
