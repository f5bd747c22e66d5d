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
    """Join the process group when launched by torchrun (a group of one for one process): NCCL on CUDA,
    gloo on CPU.

    Each rank drives the GPU of its LOCAL_RANK (never the global rank, which is wrong on multi-node jobs).
    The finite timeout makes a hung or dead rank end the job instead of hanging it.
    """
    env = dist_env()
    if "MASTER_ADDR" not in os.environ or dist.is_initialized():
        return env
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        store=_attempt_store(env, timeout),
        rank=env.rank,
        world_size=env.world_size,
        timeout=timeout,
        device_id=torch.device("cuda", env.local_rank) if device.type == "cuda" else None,
    )
    return env


def _attempt_store(env: DistEnv, timeout: datetime.timedelta):
    """The rendezvous store, namespaced by torchrun's restart count.

    After an elastic restart the new workers meet in the same store as the failed ones; without a fresh
    namespace they read the dead workers' addresses and fail to connect.
    """
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=env.world_size,
        is_master=not agent_hosts_store and env.rank == 0,
        timeout=timeout,
        multi_tenant=not agent_hosts_store,
    )
    return dist.PrefixStore(f"unetr/attempt-{restart_count()}", store)


def backend() -> str | None:
    """The process group's backend (nccl or gloo), None outside torchrun."""
    return dist.get_backend() if dist.is_initialized() else None


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place (identity in a single process). NCCL reduces only GPU tensors: a
    host tensor (per-organ Dice sums) makes the trip through this rank's GPU."""
    if not dist.is_initialized():
        return tensor
    if tensor.device.type == "cpu" and dist.get_backend() == "nccl":
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        tensor.copy_(on_gpu)
    else:
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


def restart_count() -> int:
    """How many times torchrun has restarted this job's workers (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def shared_run_name() -> str:
    """A run-folder name every rank of a torchrun job agrees on: its rendezvous run id."""
    return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics drift apart in each rank's last forward)."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def check_in_sync(model: torch.nn.Module) -> bool:
    """True when every rank holds the same weights (compares a checksum's min and max over ranks)."""
    if not dist.is_initialized():
        return True
    with torch.no_grad():
        checksum = sum(float(p.double().sum()) + float(p.double().abs().sum()) for p in model.parameters())
    low = torch.tensor([checksum], dtype=torch.float64)
    high = low.clone()
    if next(model.parameters()).is_cuda:
        low, high = low.cuda(), high.cuda()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(low.item() == high.item())


def maybe_inject_fault(epoch: int) -> None:
    """Testing aid for fault tolerance: `UNETR_FAULT_INJECT=RANK:EPOCH` makes that rank die at the start of
    that epoch, on the first attempt only, so `--max-restarts` and failure reporting can be exercised."""
    spec = os.environ.get("UNETR_FAULT_INJECT")
    if not spec or restart_count() > 0:
        return
    rank, _, at_epoch = spec.partition(":")
    if int(rank) == dist_env().rank and int(at_epoch or 0) == epoch:
        raise RuntimeError(f"fault injected on rank {rank} at epoch {epoch} (UNETR_FAULT_INJECT)")


@dataclass(frozen=True)
class Launch:
    """How many processes to start through torchrun, and where (nothing to start when all are unset)."""

    nproc_per_node: int | None = None
    distributed: bool = False
    nnodes: str | None = None
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    max_restarts: int | None = None

    def processes(self, device: torch.device) -> int | None:
        """Processes to start on this node for work on `device` (`devices.resolve_device`'s); None for none.

        One process per GPU: asking for more processes than visible GPUs is an error, unless the work is on
        the CPU (`--device cpu`), where torchrun starts that many gloo processes.
        """
        from unetr_cli.errors import UsageError

        gpus = torch.cuda.device_count()
        if self.distributed and self.nproc_per_node is None:
            if not gpus:
                raise UsageError("--distributed: no GPU is visible; use --nproc-per-node N for CPU processes")
            return gpus
        on_gpus = device.type == "cuda"
        if self.nproc_per_node and on_gpus and self.nproc_per_node > gpus:
            raise UsageError(
                f"--nproc-per-node {self.nproc_per_node}: only {gpus} GPU(s) are visible (one process per "
                "GPU); lower it, or pass --device cpu for CPU processes"
            )
        return self.nproc_per_node

    def start(self, module: str, module_args: list[str], processes: int, job: str) -> None:
        """Run `python -m MODULE MODULE_ARGS` in `processes` processes on this node through PyTorch's
        elastic launcher (`torch.distributed.run`, the code behind `torchrun`), in this process.

        Raises:
            UnetrError: a rank failed; the message names the `job`, the first failed rank and its exit code.
        """
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import get_args_parser, run

        from unetr_cli.errors import UnetrError, UsageError

        nnodes = self.nnodes or "1"
        args = [
            "--nproc-per-node",
            str(processes),
            "--nnodes",
            nnodes,
            "--max-restarts",
            str(self.max_restarts or 0),
        ]
        if self.rdzv_endpoint is None and nnodes == "1":
            args.append("--standalone")
        else:
            if self.rdzv_endpoint is None:
                raise UsageError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
            args += ["--node-rank", str(self.node_rank or 0), "--rdzv-backend", "c10d"]
            args += ["--rdzv-endpoint", self.rdzv_endpoint]
        # Share the CPU between the processes, not torchrun's blanket OMP_NUM_THREADS=1 (and its warning).
        threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = threads or str(max(1, (os.cpu_count() or 1) // processes))
        try:
            run(get_args_parser().parse_args([*args, "-m", module, *module_args]))
        except ChildFailedError as err:
            # The rank that failed on its own, not the ones the launcher then stopped with SIGTERM.
            rank, failure = min(
                err.failures.items(), key=lambda item: (item[1].exitcode < 0, item[1].timestamp, item[0])
            )
            detail = f" ({failure.message})" if isinstance(failure.message, str) and failure.message else ""
            raise UnetrError(
                f"distributed {job} failed: rank {rank} (local rank {failure.local_rank}) exited with code "
                f"{failure.exitcode}{detail}; {len(err.failures)} rank(s) failed, the others were stopped"
            ) from None
        finally:
            if threads is None:
                del os.environ["OMP_NUM_THREADS"]
