"""Does the score rise just because an image is dark? DAn-VAE against the plain VAE.

    python benchmarks/brightness_bias.py [--difficulty easy --size 32 --epochs 40]

Trains `danvae` and `vae` on the same generated surfaces (one material, 25 % dark
images) and prints, per score kind, the test AUROC and the Spearman correlation of the
score with brightness among normal test images, plus R² of brightness from z_y and z_x.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from scipy.stats import spearmanr
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score, roc_auc_score

from danvae import Detector
from danvae.config import ModelConfig, TrainConfig
from danvae.data.folders import discover, pack
from danvae.data.synthetic import generate_surfaces
from danvae.models import SCORE_KINDS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--difficulty", default="easy")
    ap.add_argument("--material", default="brushed_metal")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1] / ".cache"
    root.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        kw = dict(size=args.size, dark_share=0.25, difficulty=args.difficulty, materials=[args.material])
        generate_surfaces(Path(tmp) / "train", n_normal=300, n_anomaly=40, seed=1, **kw)
        generate_surfaces(Path(tmp) / "test", n_normal=150, n_anomaly=60, seed=2, **kw)
        train, test = pack(discover(Path(tmp) / "train"), args.size), pack(discover(Path(tmp) / "test"), args.size)
    labels = (train.table["label"] == "anomaly").to_numpy()
    test_labels = (test.table["label"] == "anomaly").to_numpy()
    normal = ~test_labels
    cfg = TrainConfig(epochs=args.epochs, warmup_epochs=args.epochs // 4, batch_size=32, seed=args.seed)
    print(f"{args.difficulty} {args.material} {args.size}px, {args.epochs} epochs, seed {args.seed}")
    print(f"{'model':7} {'kind':10} {'AUROC':>6} {'rho(score, brightness | normal)':>32}")
    for name in ("danvae", "vae"):
        start = time.perf_counter()
        det = Detector(ModelConfig(name=name, zx_dim=16, zy_dim=4), image_size=args.size, train=cfg).fit(
            train.images, labels, progress=False)
        table = det.score_table(test.images)
        for kind in SCORE_KINDS:
            rho = spearmanr(test.table["brightness"][normal], table[kind][normal]).statistic
            mark = "  <- default" if kind == det.score_kind else ""
            print(f"{name:7} {kind:10} {roc_auc_score(test_labels, table[kind]):6.3f} {rho:32.3f}{mark}")
        rho = spearmanr(test.table["brightness"][normal], table["score"][normal]).statistic
        print(f"{name:7} {'decision':10} {roc_auc_score(test_labels, table['score']):6.3f} {rho:32.3f}"
              f"  <- {det.score_kind} less its brightness trend on validation normals")
        z_train, z_test = det.latents(train.images), det.latents(test.images)
        for part, z in z_test.items():
            reg = LinearRegression().fit(z_train[part], train.table["brightness"])
            print(f"{name:7} R²({part} → brightness) = {r2_score(test.table['brightness'], reg.predict(z)):.3f}")
        print(f"{name:7} fit {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
