"""Ingest throughput: 64 px PNGs hashed, decoded, stored and packed (floor: 500 images/s on 2 cores).

    python benchmarks/ingest_throughput.py [--images 2000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from danvae.config import SplitShares
from danvae.data.ingest import ingest
from danvae.data.synthetic import generate_surfaces


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1] / ".cache" / "bench-ingest"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        n_anomaly = args.images // 10
        generate_surfaces(Path(tmp) / "src", n_normal=args.images - n_anomaly, n_anomaly=n_anomaly, size=64, seed=0)
        start = time.perf_counter()
        result = ingest([("bench", Path(tmp) / "src")], Path(tmp) / "data", 64, 3, SplitShares(), workers=args.workers)
        first = time.perf_counter() - start
        start = time.perf_counter()
        ingest([("bench", Path(tmp) / "src")], Path(tmp) / "data", 64, 3, SplitShares(), workers=args.workers)
        again = time.perf_counter() - start
    print(f"ingest: {len(result.added)} images in {first:.2f} s = {len(result.added) / first:.0f} images/s "
          f"(floor 500); re-ingest of the same folder {again:.2f} s")


if __name__ == "__main__":
    main()
