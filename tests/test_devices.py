"""Precision policy: `exact_fp32` turns CUDA's TF32 off for fp32 work and gives the process its flags back."""

from __future__ import annotations

import threading

import torch

from unetr_cli.devices import exact_fp32


def flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def test_tf32_is_off_inside_and_restored_after_even_when_blocks_overlap():
    before = flags()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        cuda = torch.device("cuda")  # the flags are settable without a GPU
        inside, started, finish = [], threading.Event(), threading.Event()

        def other_thread() -> None:
            with exact_fp32(cuda, None):
                started.set()
                finish.wait(10)

        helper = threading.Thread(target=other_thread)
        helper.start()
        started.wait(10)
        with exact_fp32(cuda, None):  # overlapping the helper's block, ending first
            inside.append(flags())
        inside.append(flags())  # the helper's block still runs
        finish.set()
        helper.join()
        assert inside == [(False, False), (False, False)] and flags() == (True, True)
        with exact_fp32(cuda, torch.bfloat16), exact_fp32(torch.device("cpu"), None):
            assert flags() == (True, True)  # autocast, or the CPU: nothing to change
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
