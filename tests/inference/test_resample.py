"""Carrying a segmentation back to the scan's grid: exact on every grid, on the host and the device path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unetr_cli.inference.resample import probabilities_to_labels_on_device, resample_labels


def test_resample_labels_identity_flip_and_upsampling():
    labels = np.random.default_rng(0).integers(0, 5, (12, 10, 8)).astype(np.uint8)
    grid = np.diag([1.5, 1.5, 2.0, 1.0])
    assert np.array_equal(resample_labels(labels, grid, labels.shape, grid), labels)
    flipped = grid.copy()
    flipped[0, 0], flipped[0, 3] = -1.5, 1.5 * 11
    assert np.array_equal(resample_labels(labels, grid, labels.shape, flipped), labels[::-1])
    fine = np.diag([0.75, 0.75, 1.0, 1.0])
    upsampled = resample_labels(labels, grid, (24, 20, 16), fine)
    assert np.array_equal(upsampled[::2, ::2, ::2], labels)


def test_resample_labels_keeps_boundaries_between_voxel_centres():
    """A sphere resampled to a finer grid keeps its volume within a few percent (no staircase growth)."""
    coarse = np.zeros((30, 30, 30), np.uint8)
    x, y, z = np.meshgrid(*(np.arange(30),) * 3, indexing="ij")
    coarse[(x - 14.5) ** 2 + (y - 14.5) ** 2 + (z - 14.5) ** 2 < 10**2] = 3
    fine = resample_labels(coarse, np.diag([2.0, 2.0, 2.0, 1.0]), (60, 60, 60), np.diag([1.0, 1.0, 1.0, 1.0]))
    coarse_ml, fine_ml = (coarse == 3).sum() * 8, (fine == 3).sum()
    assert abs(fine_ml - coarse_ml) / coarse_ml < 0.05
    assert set(np.unique(fine)) == {0, 3}


def test_axis_by_axis_path_equals_the_general_path():
    from unetr_cli.inference.resample import _positions, _VotingGrid

    rng = np.random.default_rng(1)
    labels = (rng.random((14, 11, 9)) * 4).astype(np.uint8)
    source = np.diag([1.5, 1.5, 2.0, 1.0])
    target = np.array([[0.0, -0.9, 0.0, 14.0], [0.7, 0.0, 0.0, -2.0], [0.0, 0.0, 1.3, 0.5], [0, 0, 0, 1.0]])
    shape = (20, 26, 17)
    mapping = np.linalg.inv(source) @ target
    general = _VotingGrid(labels).sample_positions(_positions(mapping, shape, 0, shape[2]))
    assert np.array_equal(resample_labels(labels, source, shape, target), general)


@pytest.mark.parametrize("oblique", [False, True])
def test_probability_resampling_equals_full_trilinear_interpolation(oblique):
    """Only disagreeing neighbourhoods are interpolated, yet the result is the classical one everywhere."""
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 10, 9, 8)) * 3
    logits[1, 2:7, 2:7, 2:6] += 6  # an organ, so most neighbourhoods agree
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    labels = probabilities.argmax(axis=0).astype(np.uint8)
    source = np.diag([2.0, 2.0, 3.0, 1.0])
    target = np.diag([0.7, -0.9, 1.1, 1.0])
    target[1, 3] = 16.0
    if oblique:
        angle = np.radians(9)
        target[:3, :3] = (
            np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
            @ target[:3, :3]
        )
    shape = (24, 20, 22)
    result = resample_labels(labels, source, shape, target, probabilities=probabilities)

    padded = np.pad(probabilities, ((0, 0), (1, 1), (1, 1), (1, 1)))
    padded[0][np.pad(np.zeros(labels.shape, bool), 1, constant_values=True)] = 1.0
    mapping = np.linalg.inv(source) @ target
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1) @ mapping[:3, :3].T
    positions = (grid + mapping[:3, 3] + 1.0).reshape(-1, 3).T
    inside = np.all((positions >= 0) & (positions <= np.array(padded.shape[1:])[:, None] - 1), axis=0)
    interpolated = np.stack(
        [map_coordinates(channel, positions, order=1, mode="nearest") for channel in padded]
    )
    expected = np.where(inside, interpolated.argmax(axis=0), 0).reshape(shape)
    assert np.array_equal(result, expected)


@pytest.mark.parametrize("oblique", [False, True])
def test_device_path_equals_the_host_path(oblique):
    """The GPU path's resampling (`grid_sample` in slabs, background taking the weight outside the grid), run
    here on CPU tensors, gives the host path's labels."""
    from scipy.ndimage import gaussian_filter

    from unetr_cli.phantoms import scanner_affine

    rng = np.random.default_rng(0)
    source_shape, target_shape = (30, 28, 20), (64, 60, 41)
    logits = np.stack([gaussian_filter(rng.normal(size=source_shape), 2) * 20 for _ in range(5)])
    logits = logits.astype(np.float32)
    source = scanner_affine(source_shape, (3.0, 3.0, 4.0), "RAS")
    target = scanner_affine(
        target_shape,
        (1.4, 1.5, 2.0),
        "LPS",
        center=(2.0, -1.0, 3.0),
        oblique_degrees=14.0 if oblique else 0.0,
    )
    probabilities = torch.softmax(torch.from_numpy(logits), dim=0).numpy()
    host = resample_labels(
        probabilities.argmax(0).astype(np.uint8), source, target_shape, target, probabilities
    )
    device = probabilities_to_labels_on_device(
        torch.from_numpy(logits.copy()), source, target_shape, target, chunk_voxels=20_000
    )
    assert np.array_equal(device, host)
    assert 0.3 < (host > 0).mean() < 0.9  # parts of the scan lie outside the model grid, parts inside
