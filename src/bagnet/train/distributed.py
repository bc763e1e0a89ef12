"""Distributed setup from torchrun's environment, and the few collectives training needs.

``torchrun --nproc-per-node N -m bagnet train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` or a rendezvous endpoint for
multi-node runs); without them training runs in one process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = DistInfo()


class _RankFilter(logging.Filter):
    """Let only rank 0 speak below WARNING, so N processes do not print N copies."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes; a no-op outside torchrun.

    Picks NCCL for CUDA and gloo otherwise, and for CUDA binds this process to the GPU
    ``LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    rank_filter = _RankFilter(rank)
    for handler in logging.getLogger().handlers:
        handler.addFilter(rank_filter)
    logger.info("distributed: %d processes, backend %s", world_size, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity when not distributed)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: every sample evaluated exactly once.

    torch's ``DistributedSampler`` pads with repeated samples so all ranks get equal
    shares, which would count some validation images twice.
    """

    def __init__(self, length: int, info: DistInfo):
        self.length = length
        self.info = info

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.info.rank, self.length, self.info.world_size))

    def __len__(self) -> int:
        return len(range(self.info.rank, self.length, self.info.world_size))
