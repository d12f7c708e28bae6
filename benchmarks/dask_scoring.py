"""Scoring throughput: the single-process pass against Dask LocalClusters of 1 and 2 workers.

    python benchmarks/dask_scoring.py [--images 2000 --size 64]

One model (trained for an epoch: scoring cost does not depend on training), the same images
for every pass; each Dask figure includes starting and stopping its cluster, as the score
stage pays it. Prints images/s and checks the tables are identical.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from danvae import Detector
from danvae.config import TrainConfig
from danvae.dask_scoring import score_on_dask
from danvae.data.synthetic import MATERIALS, as_difficulty, render_surface, sample_lighting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    d = as_difficulty("default")
    images = np.stack([render_surface(rng, args.size, MATERIALS[i % len(MATERIALS)], None,
                                      sample_lighting(rng, 0.15), d).image for i in range(args.images)])
    root = Path(__file__).resolve().parents[1] / ".cache" / "bench-dask"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        det = Detector("danvae", image_size=args.size, train=TrainConfig(epochs=1, warmup_epochs=0))
        det.fit(images[:200], progress=False).save(Path(tmp) / "model")
        start = time.perf_counter()
        want = Detector.load(Path(tmp) / "model").score_table(images)
        single = time.perf_counter() - start
        print(f"| pass | seconds | images/s |\n|---|---|---|\n| single process (torch threads: all cores) | "
              f"{single:.1f} | {len(images) / single:.0f} |", flush=True)
        for workers in (1, 2):
            start = time.perf_counter()
            got, _ = score_on_dask(Path(tmp) / "model", images, workers=workers, scratch=Path(tmp) / "dask")
            seconds = time.perf_counter() - start
            pd.testing.assert_frame_equal(got, want, check_exact=True)
            print(f"| Dask LocalCluster, {workers} worker(s) × 1 thread, cluster start included | {seconds:.1f} | "
                  f"{len(images) / seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
