"""Everything distributed, in one place: torchrun's environment, the process group, reductions.

The rest of the code asks `is_main()` and calls the reductions, which are no-ops in a single process, so one
training loop serves one CPU, one GPU and many GPUs (the nanoGPT pattern).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistEnv:
    """Read RANK / LOCAL_RANK / WORLD_SIZE as torchrun sets them."""
    return DistEnv(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )


def is_main() -> bool:
    """True on the process that logs and writes files."""
    return dist_env().rank == 0


def init(device: torch.device, timeout_s: int) -> DistEnv:
    """Join the process group when launched by torchrun: NCCL on CUDA, gloo on CPU.

    Each rank drives the GPU of its LOCAL_RANK (never the global rank, which is wrong on multi-node jobs).
    The finite timeout makes a hung or dead rank end the job instead of hanging it.
    """
    env = dist_env()
    if not env.is_distributed or dist.is_initialized():
        return env
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=torch.device("cuda", env.local_rank) if device.type == "cuda" else None,
    )
    return env


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place (identity in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value):
    """Rank 0's value on every rank."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def on_main(function, *args):
    """Run `function` on the main process only; every rank then returns its result or raises its error.

    Used for checks and file preparation that must happen once, so a bad input stops all ranks at once
    instead of leaving the others waiting at a barrier.
    """
    outcome = None
    if is_main():
        try:
            outcome = ("ok", function(*args))
        except Exception as err:  # handed to every rank below
            outcome = ("error", err)
    outcome = broadcast_object(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]
