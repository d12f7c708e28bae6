"""Training-loop and scoring throughput against a bare step of the same network.

    python benchmarks/train_throughput.py [--images 640 --epochs 3]

64 px RGB, the default spatial DAn-VAE (zx_dim 8, zy_dim 8, batch 32, 32-px training
crops), 2 torch threads. The "bare" figures run the same model's loss forward/backward +
Adam step on crop batches (with defect masks) already in memory, or its score pass; the
"project" figures run `Trainer.run_epoch` on packed uint8 images (shuffling, cropping,
relighting, pasting synthetic defects, conversion) and `score_images` on a uint8 array,
in the same process. Floor: project ≥ 0.9 × bare.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from danvae.config import ModelConfig, TrainConfig
from danvae.models import Batch, build_model
from danvae.scoring import score_images
from danvae.train import Trainer, TrainingData, loss_weights


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=640)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = args.size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    y = images.max(-1).mean((1, 2)) / 255.0
    data = TrainingData.from_arrays(images, y, np.zeros(args.images, bool), sup_ratio=0.5)
    cfg = TrainConfig(epochs=args.epochs, warmup_epochs=0, device="cpu")
    bs, crop = cfg.batch_size, min(cfg.crop or size, size)
    model_cfg = ModelConfig(name="danvae")

    # Bare: the same model and optimizer on float batches already in memory.
    torch.manual_seed(0)
    model = build_model(model_cfg, 3, size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = loss_weights(cfg, 0, 3, size)
    x = torch.rand(bs, 3, crop, crop)
    mask = torch.zeros(bs, crop, crop, dtype=torch.bool)
    mask[: bs // 2, 8:12, 8:12] = True
    batch = Batch(x, torch.rand(bs), torch.rand(bs) > 0.5, torch.zeros(bs, dtype=torch.bool), mask=mask,
                  has_mask=torch.ones(bs, dtype=torch.bool), target=x)
    steps = args.images // bs

    def bare_epoch() -> None:
        for _ in range(steps):
            loss = model.loss(batch, weights)["total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    # Project: Trainer.run_epoch on packed uint8 images (shuffling, slicing, conversion, logging).
    torch.manual_seed(0)
    trainer = Trainer(build_model(model_cfg, 3, size), cfg, progress=False)

    bare_epoch()  # warm both up (allocator, oneDNN primitives)
    trainer.run_epoch(data, 0)
    bare_t, loop_t = [], []
    for epoch in range(args.epochs):  # interleaved, so machine noise hits both alike
        t = time.perf_counter(); bare_epoch(); bare_t.append(time.perf_counter() - t)
        t = time.perf_counter(); trainer.run_epoch(data, epoch + 1); loop_t.append(time.perf_counter() - t)
    bare_ips = steps * bs / min(bare_t)
    loop_ips = args.images / min(loop_t)

    # Scoring: score_images on uint8 vs the model's score pass on a float tensor.
    net = trainer.model.eval()
    xs = torch.rand(256, 3, size, size)
    ys = torch.rand(256)
    with torch.no_grad():
        net.scores(xs, ys)
        t = time.perf_counter()
        for _ in range(args.images // 256):
            net.scores(xs, ys)
        bare_score = (args.images // 256) * 256 / (time.perf_counter() - t)
    t = time.perf_counter()
    score_images(net, images[: (args.images // 256) * 256], y, batch_size=256)
    loop_score = (args.images // 256) * 256 / (time.perf_counter() - t)

    print(f"train  bare step : {bare_ips:8.1f} images/s")
    print(f"train  project   : {loop_ips:8.1f} images/s   ratio {loop_ips / bare_ips:.3f} (floor 0.9)")
    print(f"score  bare pass : {bare_score:8.1f} images/s")
    print(f"score  project   : {loop_score:8.1f} images/s   ratio {loop_score / bare_score:.3f}")


if __name__ == "__main__":
    main()
