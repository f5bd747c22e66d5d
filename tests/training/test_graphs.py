"""The bookkeeping around CUDA-graph recording, on the CPU with PyTorch's recorder stood in for: the recorded
shape replays, other shapes and everything after run the model's own forward, the batch-norm statistics the
recording touched are put back, and a failed recording is one warning and eager steps. (The real recording
runs in tests/test_gpu.py.)"""

from __future__ import annotations

import pytest
import torch

from unetr_cli.training.graphs import GraphedTraining

REPLAYED = 100.0  # the stand-in's replay adds this, so a test can tell a replay from an eager call


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm3d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def _recorder(recorded: list, fail: bool = False):
    """Like `torch.cuda.make_graphed_callables`: runs the module while recording and replaces its forward."""

    def make_graphed_callables(module, sample_args):
        module(*sample_args)
        module(*sample_args)
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing\nCUDA error details")
        recorded.append(sample_args[0].shape)
        own = module.forward
        module.forward = lambda x: own(x) + REPLAYED
        return module

    return make_graphed_callables


def _statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    return [buffer.clone() for buffer in model.buffers()]


def test_the_recorded_shape_replays_and_the_rest_runs_eagerly(monkeypatch):
    recorded = []
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", _recorder(recorded))
    torch.manual_seed(0)
    batch, short = torch.randn(4, 1, 4, 4, 4), torch.randn(3, 1, 4, 4, 4)
    model, eager = _Net().train(), _Net().train()
    step = GraphedTraining(model, None, on_failure=pytest.fail)

    assert (step(batch) > REPLAYED / 2).all()  # recorded at the first call, then replayed
    assert (step(batch) > REPLAYED / 2).all()
    assert (step(short) < REPLAYED / 2).all()  # another shape: the model's own forward
    assert recorded == [batch.shape]
    assert "forward" not in vars(model)  # validation (eval mode) and anything else call the model itself
    for x in (batch, batch, short):  # the same three steps, eagerly
        eager(x)
    for ours, theirs in zip(_statistics(model), _statistics(eager), strict=True):
        assert torch.equal(ours, theirs)  # the recording's own passes left no trace


def test_a_failed_recording_warns_once_and_the_steps_run_eagerly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", _recorder([], fail=True))
    warnings = []
    torch.manual_seed(0)
    batch = torch.randn(4, 1, 4, 4, 4)
    model, eager = _Net().train(), _Net().train()
    step = GraphedTraining(model, None, on_failure=warnings.append)

    for _ in range(3):
        assert torch.equal(step(batch), eager(batch))
    assert warnings == [
        "CUDA graphs could not record the training step (operation not permitted when stream is capturing): "
        "eager steps"
    ]
    assert "forward" not in vars(model)
    for ours, theirs in zip(_statistics(model), _statistics(eager), strict=True):
        assert torch.equal(ours, theirs)
