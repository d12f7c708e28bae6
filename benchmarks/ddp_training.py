"""DDP training throughput: training images per second in 1 process and in N processes (torch
DDP under torchrun, gloo on CPU), the same global batch, and what one gradient all-reduce costs.

    python benchmarks/ddp_training.py --images 480 --epochs 3 --nproc 2

Each configuration trains the default spatial DAn-VAE (``params.yaml``'s model and train
sections, 64 px) from scratch on the same generated images; the first epoch is left out of
the rate (start-up), the others are timed. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def training_data(n: int, size: int):
    from danvae.data.synthetic import DEFECTS, MATERIALS, as_difficulty, render_surface, sample_lighting
    from danvae.images import brightness
    from danvae.train import TrainingData

    rng = np.random.default_rng(0)
    d = as_difficulty("default")
    n_anom = n // 10
    rows = [render_surface(rng, size, MATERIALS[rng.integers(len(MATERIALS))],
                           None if i < n - n_anom else DEFECTS[rng.integers(len(DEFECTS))],
                           sample_lighting(rng, 0.15), d) for i in range(n)]
    images = np.stack([r.image for r in rows])
    anomaly = np.array([r.defect is not None for r in rows])
    masks = np.stack([r.mask for r in rows])
    return TrainingData.from_arrays(images, brightness(images), anomaly, 0.5, 0, masks=masks,
                                    has_mask=anomaly.copy())


def train_and_time(args) -> dict:
    """Train in this process (one rank of a torchrun group, or alone); epoch times on rank 0."""
    from danvae.config import load_params
    from danvae.models import build_model
    from danvae.train import Trainer

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    cfg = params.train.model_copy(update={"epochs": args.epochs, "warmup_epochs": 0, "keep_best": False,
                                          "threads": args.threads})
    data = training_data(args.images, args.size)
    torch.manual_seed(0)
    model = build_model(params.model, 3, args.size)
    trainer = Trainer(model, cfg, run_dir=None, progress=False)
    times = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        trainer.run_epoch(data, epoch)
        times.append(time.perf_counter() - start)
    out = {"world": trainer.world.size, "epoch_s": times, "images": args.images}
    if trainer.world.size > 1:
        import torch.distributed as dist

        flat = torch.zeros(sum(p.numel() for p in model.parameters()))
        for _ in range(5):
            dist.all_reduce(flat)
        start = time.perf_counter()
        for _ in range(50):
            dist.all_reduce(flat)
        out["allreduce_ms"] = (time.perf_counter() - start) / 50 * 1000
        out["parameters"] = int(flat.numel())
        out["steps_per_epoch"] = len(trainer._local_batches(torch.arange(int((~data.anomaly).sum())))) + \
            cfg.anomaly_repeats * len(trainer._local_batches(torch.arange(int(data.anomaly.sum()))))
    return out


def rate(result: dict) -> float:
    timed = result["epoch_s"][1:] or result["epoch_s"]
    return result["images"] / float(np.mean(timed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        result = train_and_time(args)
        if int(os.environ.get("RANK", "0")) == 0:
            args.worker.write_text(json.dumps(result))
        return
    rows = []
    for threads in sorted({1, args.nproc}):
        args.threads = threads
        rows.append((f"1 process × {threads} thread{'s' if threads > 1 else ''}", train_and_time(args)))
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1] / ".cache") as tmp:
        out = Path(tmp) / "ddp.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_CPP_LOG_LEVEL": "ERROR"}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
                        f"--log-dir={Path(tmp) / 'torchrun'}", __file__, "--images", str(args.images), "--size", str(args.size), "--epochs", str(args.epochs),
                        "--threads", "1", "--worker", str(out)], check=True, env=env)
        ddp = json.loads(out.read_text())
    rows.append((f"{args.nproc} processes × 1 thread (DDP, gloo)", ddp))
    print(f"{args.images} training images of {args.size} px, {args.epochs} epochs (the first not timed)\n")
    print("| configuration | s per epoch | training images/s |\n|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {np.mean(r['epoch_s'][1:] or r['epoch_s']):.1f} | {rate(r):.1f} |")
    print(f"\nall-reduce of the {ddp['parameters']:,} gradients (float32) across {args.nproc} ranks: "
          f"{ddp['allreduce_ms']:.2f} ms; {ddp['steps_per_epoch']} steps per epoch per rank → "
          f"{ddp['allreduce_ms'] * ddp['steps_per_epoch'] / 1000:.2f} s of an epoch")


if __name__ == "__main__":
    main()
