"""Data-parallel training under ``torchrun`` (DistributedDataParallel): the pieces the runners share.

    torchrun --nproc_per_node 2 -m bert_torch.run_classifier ... --train_batch_size 32

``--train_batch_size`` keeps the official meaning, examples per optimizer step over all processes and
accumulation steps: each of the N processes takes its own contiguous shard of every batch (B / N rows),
split into ``--gradient_accumulation_steps`` micro-batches, and DDP averages the gradients over the
processes. Equal shards make that average the full batch's mean-loss gradient, so a batch size that N x
accumulation does not divide is refused. Every process draws the same batch order (one seed), so no
example is duplicated or dropped beyond what the official input pipeline drops (the remainder of the
stream rolls into the next epoch). Backend: gloo on CPU, nccl on CUDA (each process on ``cuda:LOCAL_RANK``).
torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) is read
as is; the old launcher's ``--local_rank`` is accepted. Multi-node runs are torchrun's rendezvous
(``--nnodes``, ``--rdzv-endpoint``): nothing here is specific to one node. Only rank 0 writes outputs and
shows progress.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env(local_rank: Optional[int] = None) -> World:
    """The process's place in the job, from torchrun's environment (a single process without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size < 1:
        raise ValueError(f"WORLD_SIZE {size}: must be at least 1")
    local = int(os.environ.get("LOCAL_RANK", local_rank if local_rank is not None and local_rank >= 0 else 0))
    return World(rank=int(os.environ.get("RANK", "0")), size=size, local_rank=local)


def init(world: World, device: str) -> str:
    """Joins the process group (when there is more than one process); returns this process's device."""
    if world.size == 1:
        return device
    import torch.distributed as dist
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def shard(idx: np.ndarray, world: World) -> np.ndarray:
    """This process's contiguous share of one global batch (the batch size divides evenly: checked before)."""
    per = len(idx) // world.size
    return idx[world.rank * per:(world.rank + 1) * per]


def check_batch(train_batch_size: int, accumulation: int, world: World) -> None:
    if accumulation < 1 or train_batch_size < 1 or train_batch_size % (world.size * accumulation):
        raise ValueError(f"--train_batch_size {train_batch_size} must be a positive multiple of "
                         f"--gradient_accumulation_steps {accumulation} x {world.size} processes (examples per "
                         "optimizer step over all processes and accumulation steps)")


def wrap(model: torch.nn.Module, world: World, device: str) -> torch.nn.Module:
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)


def no_sync(model: torch.nn.Module, last: bool):
    """DDP's all-reduce only on the last micro-batch of a step (the sum is the same; it saves traffic)."""
    return model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext()


def mean_over_processes(x: float, world: World) -> float:
    if world.size == 1:
        return x
    import torch.distributed as dist
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world.size


def gather_rows(rows: np.ndarray, world: World) -> np.ndarray:
    """Every process's ``rows`` (equal lengths), concatenated in rank order: what a step used over the job."""
    if world.size == 1:
        return np.asarray(rows)
    import torch.distributed as dist
    mine = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    parts = [torch.empty_like(mine) for _ in range(world.size)]
    dist.all_gather(parts, mine)
    return torch.cat(parts).numpy()


def finish(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
