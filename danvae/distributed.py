"""Data-parallel training over processes with ``torch.distributed`` (DDP), as ``torchrun`` starts them.

    danvae train --data DIR --out runs/a --nproc 2            # torchrun on this host
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m danvae.cli train --data DIR --out runs/a            # the same on each host (a shared folder)

Every process takes its share of each global batch (``train.batch_size`` images split across
ranks), DDP averages the gradients, so a step sees the same images as a single process does.
The epoch's order comes from the same seed on every rank; augmentation draws are seeded per
rank. Rank 0 alone validates, writes checkpoints and history, and calibrates and saves the
detector; every rank resumes from the same checkpoint. ``gloo`` on CPU, ``nccl`` on CUDA.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch of indices (every ``size``-th, from ``rank``)."""
        return idx[self.rank::self.size]


def requested_world() -> World:
    """What torchrun asked for through the environment (WORLD_SIZE, RANK, LOCAL_RANK)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def join(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun set up (once per process) and return this rank's world
    and device: on CUDA, the GPU of its local rank."""
    world = requested_world()
    if world.size == 1:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def sum_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """``values`` summed over every rank (itself when not distributed)."""
    if world.size > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def launch(module: str, argv: list[str], nproc: int, log_dir: str | os.PathLike) -> int:
    """Run ``python -m <module> <argv>`` as ``nproc`` processes on this host under torchrun (its
    files in ``log_dir``, not in /tmp); its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           f"--log-dir={log_dir}", "-m", module, *argv]
    # one thread per process unless told otherwise; DDP's note on parameters a step leaves unused
    # (the decoder frozen on anomaly batches, by design) is not the user's concern
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "TORCH_CPP_LOG_LEVEL": os.environ.get("TORCH_CPP_LOG_LEVEL", "ERROR")}
    return subprocess.run(cmd, env=env, check=False).returncode
