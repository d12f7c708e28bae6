"""Scoring fanned out on a Dask cluster: the same table as ``Detector.score_table``, row for row.

    table, maps = score_on_dask("models/detector", images, workers=2)                 # a LocalCluster
    table, maps = score_on_dask("models/detector", images, address="tcp://host:8786")  # a running scheduler

The images are cut into chunks of whole scoring batches (``score.batch_size``), so every
batch the model sees is the batch the single-process pass would have given it, and each
worker computes with as many torch threads as the calling process does (a convolution
summed over another number of threads rounds differently in the last bits), so the numbers
are bit-identical; each worker loads the saved detector once. Chunks come back in order. A worker needs the same danvae and the model folder at the same
path (a shared filesystem), as a Prefect worker does.
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from danvae.detector import Detector


@functools.lru_cache(maxsize=4)
def _detector(model_dir: str, stamp: float):  # stamp: a changed model file is loaded anew
    from danvae.detector import Detector

    return Detector.load(model_dir)


def score_chunk(model_dir: str, images: np.ndarray, heatmaps: bool, threads: int,
                nuisance: np.ndarray | None = None) -> tuple[pd.DataFrame, np.ndarray | None]:
    """One chunk scored by the detector saved in ``model_dir`` (loaded once per process, and
    again when its file changes) with ``threads`` torch threads: what a worker runs."""
    import torch

    torch.set_num_threads(threads)
    stamp = (Path(model_dir) / "detector.pt").stat().st_mtime
    out = _detector(model_dir, stamp).score_table(images, heatmaps=heatmaps, nuisance=nuisance)
    return out if heatmaps else (out, None)


def chunks_of(images: np.ndarray, batch_size: int, batches_per_chunk: int = 1) -> list[np.ndarray]:
    """``images`` cut into chunks of whole scoring batches (so every batch the model sees is the
    one the single-process pass would have given it)."""
    step = batch_size * max(1, batches_per_chunk)
    return [images[start:start + step] for start in range(0, len(images), step)]


def factor_chunks(nuisance: np.ndarray | None, n_chunks: int, batch_size: int, batches_per_chunk: int = 1
                  ) -> list[np.ndarray | None]:
    """Each chunk's nuisance values, cut as :func:`chunks_of` cuts the images (``None`` each for brightness)."""
    if nuisance is None:
        return [None] * n_chunks
    return list(chunks_of(np.asarray(nuisance), batch_size, batches_per_chunk))


def local_cluster_options(workers: int, scratch: Path) -> dict:
    """LocalCluster settings: one-thread worker processes on 127.0.0.1, scratch files in ``scratch``."""
    scratch.mkdir(parents=True, exist_ok=True)
    # processes with one Dask thread each: the parallelism inside a task is torch's
    return dict(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1",
                local_directory=str(scratch))


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """Dask's nanny writes OMP_NUM_THREADS=1 (and more) into this process's environment before
    it spawns a worker, and leaves it there: every process started afterwards (a model server,
    a DVC stage) would then compute with one thread. Inside this block it may; after, the
    environment is what it was."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _local_cluster(workers: int, scratch: Path):
    import dask
    from distributed import LocalCluster

    with environment_kept(), dask.config.set({"temporary-directory": str(scratch)}):  # its locks too, not in /tmp
        return LocalCluster(**local_cluster_options(workers, scratch))


def score_anywhere(detector: Detector, model_dir: str | Path, images: np.ndarray, *, heatmaps: bool = False,
                   workers: int = 1, address: str | None = None, progress: bool = False,
                   nuisance: np.ndarray | None = None) -> tuple[pd.DataFrame, np.ndarray | None]:
    """``detector.score_table`` in this process (``workers`` 1, no ``address``), or the same
    table from :func:`score_on_dask` on the detector saved in ``model_dir``."""
    if workers > 1 or address:
        return score_on_dask(model_dir, images, workers=workers, address=address, heatmaps=heatmaps,
                             batch_size=detector.score_config.batch_size, nuisance=nuisance)
    if heatmaps:
        return detector.score_table(images, heatmaps=True, progress=progress, nuisance=nuisance)
    return detector.score_table(images, progress=progress, nuisance=nuisance), None


def score_on_dask(model_dir: str | Path, images: np.ndarray, *, workers: int = 2, address: str | None = None,
                  heatmaps: bool = False, batch_size: int = 256, batches_per_chunk: int = 1,
                  scratch: str | Path = ".cache/dask", threads: int | None = None,
                  nuisance: np.ndarray | None = None) -> tuple[pd.DataFrame, np.ndarray | None]:
    """``Detector.load(model_dir).score_table(images, heatmaps=...)`` computed on Dask: a new
    ``LocalCluster`` of ``workers`` processes (their spill and lock files under ``scratch``), or
    the scheduler at ``address``. ``threads``: torch threads per task (default: this process's)."""
    import torch
    from distributed import Client

    threads = threads or torch.get_num_threads()
    model_dir = str(Path(model_dir).resolve())
    if len(images) == 0:
        return score_chunk(model_dir, images, heatmaps, threads, nuisance)
    chunks = chunks_of(images, batch_size, batches_per_chunk)
    factors = factor_chunks(nuisance, len(chunks), batch_size, batches_per_chunk)
    cluster = None if address else _local_cluster(workers, Path(scratch))
    try:
        with Client(address or cluster) as client:
            sent = client.scatter(chunks)  # the images travel as data, not inside the task graph
            futures = client.map(score_chunk, [model_dir] * len(chunks), sent, [heatmaps] * len(chunks),
                                 [threads] * len(chunks), factors, pure=False)
            parts = client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()
    table = pd.concat([t for t, _ in parts], ignore_index=True)
    maps = np.concatenate([m for _, m in parts]) if heatmaps else None
    return table, maps
