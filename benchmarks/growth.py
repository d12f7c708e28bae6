"""How run time grows with the number of images: one training epoch and one scoring pass of the
default spatial DAn-VAE at 1k, 2k and 4k images (64 px), with the least-squares line through
them (seconds per 1,000 images, intercept, R²).

    python benchmarks/growth.py --sizes 1000 2000 4000

Training: one epoch of ``params.yaml``'s train section (labelled anomalies 10 % of the images,
with masks), timed after an untimed first epoch on the same images. Scoring: ``Detector.score_table``
(every score kind and the heatmap) on the same number of held-out images.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def images(n: int, seed: int):
    from danvae.data.synthetic import DEFECTS, MATERIALS, as_difficulty, render_surface, sample_lighting

    rng = np.random.default_rng(seed)
    d = as_difficulty("default")
    n_anom = n // 10
    rows = [render_surface(rng, 64, MATERIALS[rng.integers(len(MATERIALS))],
                           None if i < n - n_anom else DEFECTS[rng.integers(len(DEFECTS))],
                           sample_lighting(rng, 0.15), d) for i in range(n)]
    return (np.stack([r.image for r in rows]), np.array([r.defect is not None for r in rows]),
            np.stack([r.mask for r in rows]))


def epoch_seconds(n: int, params) -> float:
    from danvae.images import brightness
    from danvae.models import build_model
    from danvae.train import Trainer, TrainingData

    x, anomaly, masks = images(n, seed=1)
    data = TrainingData.from_arrays(x, brightness(x), anomaly, 0.5, 0, masks=masks, has_mask=anomaly.copy())
    torch.manual_seed(0)
    cfg = params.train.model_copy(update={"epochs": 2, "warmup_epochs": 0, "keep_best": False})
    trainer = Trainer(build_model(params.model, 3, 64), cfg, run_dir=None, progress=False)
    trainer.run_epoch(data, 0)
    start = time.perf_counter()
    trainer.run_epoch(data, 1)
    return time.perf_counter() - start


def scoring_seconds(n: int, detector) -> float:
    x, _, _ = images(n, seed=2)
    start = time.perf_counter()
    detector.score_table(x, heatmaps=True)
    return time.perf_counter() - start


def line(sizes: list[int], seconds: list[float]) -> str:
    k = np.array(sizes, float) / 1000
    slope, intercept = np.polyfit(k, seconds, 1)
    fit = slope * k + intercept
    r2 = 1 - np.sum((np.array(seconds) - fit) ** 2) / max(np.sum((np.array(seconds) - np.mean(seconds)) ** 2), 1e-12)
    return f"{slope:.1f} s per 1,000 images + {intercept:.1f} s (R² {r2:.4f})"


def main() -> None:
    from danvae import Detector
    from danvae.config import TrainConfig, load_params

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    x, anomaly, masks = images(400, seed=3)
    detector = Detector(params.model, image_size=64, train=TrainConfig(epochs=1, warmup_epochs=0))
    detector.fit(x, anomaly, masks=masks, has_mask=anomaly.copy(), progress=False)
    train_s = [epoch_seconds(n, params) for n in args.sizes]
    score_s = [scoring_seconds(n, detector) for n in args.sizes]
    print(f"torch threads {torch.get_num_threads()}\n\n| images | training epoch s | scoring s |\n|---|---|---|")
    for n, t, s in zip(args.sizes, train_s, score_s):
        print(f"| {n:,} | {t:.1f} | {s:.1f} |")
    print(f"\ntraining epoch: {line(args.sizes, train_s)}\nscoring: {line(args.sizes, score_s)}")


if __name__ == "__main__":
    main()
