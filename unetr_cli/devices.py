"""Device and precision policy, in one place for training and inference.

- `resolve_device`: `auto` is the first GPU when there is one, else the CPU; a GPU that is not there is a
  usage error naming what is visible.
- `autocast_dtype`: bf16 on GPUs that support it, else fp16 (which then needs a GradScaler); bf16 on CPUs with
  native bf16 arithmetic (AVX512-BF16 or AMX, ~3x faster there), else fp32.
- `warming_up`: the GPU's one-time start (CUDA context, cuDNN, cuBLAS) beside other start-up work.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

import torch

from unetr_cli.errors import UsageError

_NAMED_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def requested_device(name: str) -> torch.device:
    """The device `auto`, `cpu`, `cuda` or `cuda:N` asks for (`auto`: the first GPU when there is one, else
    the CPU), not yet checked against what is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_device(name: str) -> torch.device:
    """`requested_device`, checked: a GPU that is not there is a usage error naming what is visible."""
    device = requested_device(name)
    if name == "auto":
        return device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible")
    return device


@contextlib.contextmanager
def warming_up(device: torch.device, *then: Callable[[], object]):
    """On a GPU, create the CUDA context and load cuDNN and cuBLAS in a background thread while the block runs
    (importing MONAI, building the model), instead of one after the other at the model's first use, then run
    the tasks `then` there (GPU work that needs no model); the thread is joined when the block ends. A failure
    there is left for the first real use to report."""
    if device.type != "cuda":
        yield
        return
    thread = threading.Thread(target=_first_kernels, args=(device, then), name="cuda-warm-up", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _first_kernels(device: torch.device, then: tuple[Callable[[], object], ...]) -> None:
    with contextlib.suppress(Exception):
        volume, kernel = torch.zeros(1, 1, 4, 4, 4, device=device), torch.zeros(1, 1, 3, 3, 3, device=device)
        torch.nn.functional.conv3d(volume, kernel)
        torch.zeros(8, 8, device=device) @ torch.zeros(8, 8, device=device)
        for task in then:
            task()
        torch.cuda.synchronize(device)


def rank_device(device: torch.device) -> torch.device:
    """The device of this process: under torchrun, each process drives the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX)."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check())


def autocast_dtype(device: torch.device, enabled: bool, preference: str = "auto") -> torch.dtype | None:
    """The autocast dtype on `device`, or None for fp32; `preference` (auto, bf16, fp16) applies on CUDA."""
    if not enabled:
        return None
    if device.type == "cuda":
        if preference in _NAMED_DTYPES:
            return _NAMED_DTYPES[preference]
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


@contextlib.contextmanager
def exact_fp32(device: torch.device, dtype: torch.dtype | None):
    """Without autocast, fp32 means fp32 while the block runs: CUDA's TF32 shortcut for convolutions and
    matrix products (on by default in PyTorch, ~1e-3 relative error) is off, so `--no-amp` results match the
    CPU's. The flags are the process's, so they are restored when the last such block (in any thread) ends."""
    if device.type != "cuda" or dtype is not None:
        yield
        return
    with _TF32_LOCK:
        if not _TF32_SAVED:
            _TF32_SAVED.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        _TF32_USERS[0] += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _TF32_USERS[0] -= 1
            if not _TF32_USERS[0]:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = _TF32_SAVED.pop()


_TF32_LOCK = threading.Lock()
_TF32_SAVED: list[tuple[bool, bool]] = []  # the flags before the first `exact_fp32` block that is running
_TF32_USERS = [0]  # blocks running


def autocast(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` for `dtype`, or a no-op context when it is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16, whose small range needs loss scaling."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def precision_name(dtype: torch.dtype | None) -> str:
    """How a run's precision is shown to the user."""
    return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}.get(dtype, "fp32")


def peak_gpu_memory_bytes() -> int | None:
    """The most GPU memory this process's allocator has held (what a card must have), None without CUDA."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return max(torch.cuda.max_memory_reserved(i) for i in range(torch.cuda.device_count()))
