"""Inference memory at the serving limits: the peak resident memory of one request through the
logged model's ``predict_frame`` (what the pyfunc and ``mlflow models serve`` run), at the pixel
cap (``serve.max_pixels``), at the batch cap (``serve.max_batch``) and past them (refused).

    python benchmarks/inference_memory.py [--size 64]

Each case runs in a fresh process (Linux): the figure is the peak resident set during the
request (VmHWM, reset just before it) less the resident set before it, with the model loaded,
one small image scored and the request's input already held, as a server holds the decoded body.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from danvae.config import ServeConfig

CASES = {  # name -> (images, side)
    "one image at the pixel cap": (1, None),
    "a full batch of 64-px images": ("max_batch", 64),
    "a full batch of 256-px images": ("max_batch", 256),
    "16 images at the pixel cap": (16, None),
    "past the pixel cap (refused)": (1, "over"),
}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Linux: set the peak resident set (VmHWM) back to the current one."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(model_dir: str, case: str) -> dict:
    from danvae.detector import Detector
    from danvae.mlops.packaging import predict_frame

    limits = ServeConfig()
    det = Detector.load(model_dir)
    predict_frame(det, np.zeros((1, 32, 32, 3), np.uint8), limits.max_pixels, limits.max_batch)
    n, side = CASES[case]
    n = limits.max_batch if n == "max_batch" else n
    cap_side = int(limits.max_pixels ** 0.5)
    side = cap_side + 1 if side == "over" else (side or cap_side)
    images = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    base = _status_mib("VmRSS")  # the request's input already held, as a server holds the decoded body
    _reset_peak()
    start = time.perf_counter()
    try:
        predict_frame(det, images, limits.max_pixels, limits.max_batch)
        answer = "scored"
    except ValueError as exc:
        answer = f"refused: {exc}"
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    return {"case": case, "images": n, "side": side, "input_mib": round(images.nbytes / 2**20, 1),
            "peak_over_base_mib": round(peak - base, 1), "base_mib": round(base, 1), "seconds": round(seconds, 2),
            "answer": answer[:120]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="the model's image size")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(measure(args.model, args.case)))
        return
    from danvae.config import TrainConfig
    from danvae.data.synthetic import generate_surfaces
    from danvae.data.folders import discover, pack
    from danvae.detector import Detector

    root = Path(__file__).resolve().parents[1] / ".cache" / "bench-inference"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        generate_surfaces(Path(tmp) / "src", n_normal=40, n_anomaly=8, size=args.size, seed=0)
        data = pack(discover(Path(tmp) / "src"), args.size)
        det = Detector("danvae", image_size=args.size, train=TrainConfig(epochs=1, warmup_epochs=0))
        det.fit(data.images, (data.table["label"] == "anomaly").to_numpy(), progress=False)
        det.save(Path(tmp) / "model")
        print("| case | images | side | input MiB | peak over the loaded model, MiB | s | answer |\n|---|---|---|---|---|---|---|")
        for case in CASES:
            out = subprocess.run([sys.executable, __file__, "--case", case, "--model", str(Path(tmp) / "model")],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['case']} | {r['images']} | {r['side']} | {r['input_mib']} | {r['peak_over_base_mib']} | "
                  f"{r['seconds']} | {r['answer']} |", flush=True)


if __name__ == "__main__":
    main()
