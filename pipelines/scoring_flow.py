"""The ``score-folder`` flow: a folder of images scored on Dask through prefect-dask's task runner.

    python -m pipelines.scoring_flow --model models/detector --data data/incoming --out reports/night.csv --workers 2
    python -m pipelines.scoring_flow ... --dask-address tcp://scheduler:8786

One Prefect task per chunk of whole scoring batches, run by ``DaskTaskRunner`` on a
``LocalCluster`` of one-thread worker processes (or an existing scheduler), each task scoring
with the calling process's torch threads: the table is the one ``danvae score`` writes in a
single process, row for row and bit for bit, and every chunk is a task run on the Prefect
server. ``--model`` is a run folder (``danvae train``'s, or the pipeline's ``models/detector``)
that every worker can read at the same path.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from danvae.dask_scoring import chunks_of, environment_kept, factor_chunks, local_cluster_options, score_chunk
from danvae.data.labelled import load_folder
from danvae.data.nuisance import factor_values
from danvae.detector import Detector
from danvae.scoring import per_file

SCRATCH = Path(".cache/dask")


@task(name="score-chunk", cache_policy=NO_CACHE, retries=1)
def score_chunk_task(model_dir: str, images, threads: int, nuisance=None) -> pd.DataFrame:
    return score_chunk(model_dir, images, False, threads, nuisance)[0]


@flow(name="score-folder")
def score_folder(model_dir: str, data: str, out: str) -> dict:
    """Score every image under ``data`` with the detector in ``model_dir``; write the table to ``out``."""
    import torch

    model_dir = str(Path(model_dir).resolve())
    detector = Detector.load(model_dir)
    files = load_folder(data, detector.image_size, detector.channels, masks=False, progress=False)
    chunks = chunks_of(files.images, detector.score_config.batch_size)
    factor = factor_values(files.table, detector.nuisance)  # None for brightness, else from DIR/nuisance.csv
    factors = factor_chunks(factor, len(chunks), detector.score_config.batch_size)
    futures = score_chunk_task.map(unmapped(model_dir), chunks, unmapped(torch.get_num_threads()), factors)
    table = per_file(files.table, pd.concat([f.result() for f in futures], ignore_index=True))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return {"images": len(table), "flagged": int(table["is_anomaly"].sum()), "chunks": len(chunks), "out": out}


def dask_task_runner(workers: int = 2, address: str | None = None):
    """prefect-dask's runner on the scheduler at ``address``, or on a new LocalCluster."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs=local_cluster_options(workers, SCRATCH.resolve()))


def score_folder_on_dask(model_dir: str, data: str, out: str, workers: int = 2, address: str | None = None) -> dict:
    """:func:`score_folder` with its chunks on Dask; this process's environment is left as it was."""
    import dask

    with environment_kept(), dask.config.set({"temporary-directory": str(SCRATCH.resolve())}):
        return score_folder.with_options(task_runner=dask_task_runner(workers, address))(model_dir, data, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.scoring_flow", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a run folder every Dask worker can read at the same path")
    ap.add_argument("--data", required=True, help="the image folder")
    ap.add_argument("--out", required=True, help="the CSV to write")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    ap.add_argument("--dask-address", default=None, help="a running scheduler instead, e.g. tcp://host:8786")
    args = ap.parse_args(argv)
    if not (Path(args.model) / "detector.pt").is_file():
        print(f"score-folder: error: {args.model} is not a run folder (no detector.pt)", file=sys.stderr)
        return 2
    result = score_folder_on_dask(args.model, args.data, args.out, args.workers, args.dask_address)
    print(f"score-folder: {result['images']} images in {result['chunks']} tasks → {result['out']} "
          f"({result['flagged']} flagged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
