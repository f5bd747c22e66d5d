"""Learning-rate schedules against their closed forms."""

import math

import pytest

from unetr_cli.training.schedule import cosine_anneal, learning_rate, step_position, warmup_cosine


@pytest.mark.parametrize("epoch", [0, 1, 12.5, 49, 49.999])
def test_warmup_is_linear_from_zero(epoch):
    assert warmup_cosine(epoch, 1e-4, 50, 5000) == pytest.approx(1e-4 * epoch / 50)


@pytest.mark.parametrize("epoch", [50, 100, 2525, 4999, 5000])
def test_cosine_after_warmup_reaches_zero_at_max(epoch):
    expected = 0.5 * 1e-4 * (1 + math.cos(math.pi * (epoch - 50) / 4950))
    assert warmup_cosine(epoch, 1e-4, 50, 5000) == pytest.approx(expected)
    assert warmup_cosine(5000, 1e-4, 50, 5000) == pytest.approx(0.0, abs=1e-15)


def test_peak_is_base_lr_and_schedule_is_continuous():
    assert warmup_cosine(50, 3e-4, 50, 500) == pytest.approx(3e-4)
    assert warmup_cosine(50 - 1e-9, 3e-4, 50, 500) == pytest.approx(3e-4)


def test_past_max_epochs_stays_at_zero():
    assert warmup_cosine(6000, 1e-4, 50, 5000) == pytest.approx(0.0, abs=1e-15)


def test_cosine_anneal_closed_form():
    for epoch in (0, 10, 250, 500):
        assert cosine_anneal(epoch, 2e-4, 500) == pytest.approx(1e-4 * (1 + math.cos(math.pi * epoch / 500)))


def test_constant_and_dispatch():
    assert learning_rate("constant", 77.0, 1e-3, 5, 100) == 1e-3
    assert learning_rate("warmup_cosine", 2.0, 1e-3, 4, 100) == pytest.approx(5e-4)
    with pytest.raises(ValueError):
        learning_rate("linear", 1.0, 1e-3, 1, 10)


def test_first_step_already_learns():
    """Evaluated at the end of each step, the first step of warmup has a positive learning rate."""
    position = step_position(0, steps_per_epoch=24)
    assert position == pytest.approx(1 / 24)
    assert warmup_cosine(position, 1e-4, 50, 5000) > 0
    assert step_position(23, 24) == pytest.approx(1.0)
