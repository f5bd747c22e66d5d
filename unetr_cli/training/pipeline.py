"""The training data path: where the preprocessed volumes are cached and where crops and augmentation run.

Three pipelines, the same transforms and random draws in each (MONAI's CacheDataset caches everything up to
the first random transform; the crop samplers' voxel indices are computed once and cached with the volume):

- `device`: volumes cached on the training device; crops, flips, rotations and intensity jitter run there as
  tensor ops, in a loader thread (MONAI's ThreadDataLoader) that prepares the next batch while the model
  trains on this one. What a GPU wants when the dataset fits in its memory.
- `host`: volumes cached in host memory; the crops are cut there and only they move to the device (through
  pinned memory, without blocking the loader thread), where the rest of the augmentation runs, in the same
  loader thread. When the cache does not fit on the GPU.
- `workers`: today's DataLoader with worker processes (0 on a CPU-only machine, where processes compete with
  the compute threads), everything on the CPU.

`auto` picks `device` on a GPU when the estimated cache fits in half of its free memory, `host` on a GPU
otherwise, and `workers` on a CPU. Each rank of a multi-GPU run caches only its own shard of the volumes
(`device`/`host`); every epoch's order, crops and augmentations are a function of (seed, epoch, rank) on every
pipeline, so a resumed run continues exactly. `DataWait` measures what a pipeline did not hide: the time the
training loop waited for its batches.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from unetr_cli.data import augmentation, preprocessing
from unetr_cli.settings import Settings

DEVICE_SHARE = 0.5  # of the free GPU memory the cache may take; the rest is the model's


@dataclass(frozen=True)
class Pipeline:
    """The chosen pipeline and, for the start-up line, why."""

    kind: str  # device, host or workers
    reason: str


@dataclass
class TrainingData:
    """This rank's training and validation data, and how they are fed."""

    pipeline: Pipeline
    train_set: object
    loader: object
    val_set: object | None


def training_data(settings: Settings, datalist, env, device: torch.device, reporter) -> TrainingData:
    """Choose the pipeline and build the cached datasets and the loader for this rank. A cache that runs out
    of GPU memory while it is filled falls back to the `host` pipeline, with one line saying so."""
    train_cases = datalist.training
    val_cases = shard(datalist.validation, env.rank, env.world_size)
    pipeline = choose_pipeline(settings, device, shard(train_cases, env.rank, env.world_size) + val_cases)
    if pipeline.kind != "workers":  # each rank caches only its own shard
        train_cases = shard(train_cases, env.rank, env.world_size)
    try:
        train_set = training_dataset(train_cases, settings, pipeline.kind, device)
        val_set = validation_dataset(val_cases, settings, device if pipeline.kind == "device" else None)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        reporter.warn("the training cache did not fit in GPU memory: falling back to the host pipeline")
        pipeline = Pipeline("host", "cached in host memory (the GPU ran out of memory), augmented on the GPU")
        train_set = training_dataset(train_cases, settings, pipeline.kind, device)
        val_set = validation_dataset(val_cases, settings)
    steps_per_rank = math.ceil(len(datalist.training) / env.world_size)
    loader = training_loader(train_set, settings, pipeline.kind, steps_per_rank, device.type == "cuda")
    return TrainingData(pipeline, train_set, loader, val_set if datalist.validation else None)


def choose_pipeline(settings: Settings, device: torch.device, cases: list[dict]) -> Pipeline:
    """The pipeline `data.pipeline` asks for, or on `auto` the fastest one that fits (see the module)."""
    requested = settings.data.pipeline
    if requested == "workers" or (requested == "auto" and device.type != "cuda"):
        workers = loader_workers(settings, on_gpu=device.type == "cuda")
        return Pipeline("workers", f"{workers} loader process(es), augmentation on the CPU")
    if device.type != "cuda":
        where = "host memory" if requested == "host" else "memory"
        return Pipeline(requested, f"cached in {where}, augmentation in a loader thread on the CPU")
    need = estimated_cache_bytes(cases, settings)
    free, _ = torch.cuda.mem_get_info(device)
    sizes = f"{need / 2**30:.1f} GB to cache, {free / 2**30:.1f} GB free on {device}"
    if requested != "host" and need <= DEVICE_SHARE * free:
        return Pipeline("device", f"cached on {device} ({sizes}), crops and augmentation on the GPU")
    why = "requested" if requested == "host" else "too large for the GPU"
    return Pipeline(
        "host", f"cached in host memory ({sizes}: {why}), crops moved to the GPU and augmented there"
    )


def estimated_cache_bytes(cases: list[dict], settings: Settings) -> int:
    """An upper bound of the cached image and label after resampling to the training spacing (before the
    body crop), as float32, read from the headers."""
    from unetr_cli.volumes import read_info

    total = 0
    for case in cases:
        _, info = read_info(case["image"])
        extent = np.asarray(info.shape) * np.asarray(info.spacing) / np.asarray(settings.data.spacing)
        total += int(np.prod(np.ceil(extent))) * 4 * 2
    return total


def training_dataset(cases: list[dict], settings: Settings, pipeline: str, device: torch.device):
    """A CacheDataset: preprocessing once per volume, augmentation every time a volume is drawn; where the
    cache lives and where the random part runs is the pipeline's choice."""
    from monai import transforms as T

    prepare, (sample, crop, augment) = preprocessing(settings), _random_steps(settings)
    to_device = [T.EnsureTyped(keys=("image", "label"), device=device, track_meta=False)]
    crops_to_device = _through_pinned_memory(device) if device.type == "cuda" else to_device
    steps = {
        "device": [*prepare, *sample, *to_device, crop, *augment],
        "host": [*prepare, *sample, crop, *crops_to_device, *augment],
        "workers": [*prepare, *sample, crop, *augment],
    }[pipeline]
    # copy_cache off: the first random step crops, so cached volumes are never modified
    return _cached(cases, steps, settings, copy_cache=False)


def _through_pinned_memory(device: torch.device) -> list:
    """The `host` pipeline's crossing to a GPU: each crop is copied into pinned (page-locked) memory and from
    there to the GPU without blocking, so the loader thread goes on to the next batch instead of waiting for
    the training step already queued on the GPU, as a copy from ordinary host memory would."""
    from monai import transforms as T

    keys = ("image", "label")
    return [
        T.EnsureTyped(keys=keys, track_meta=False),
        T.Lambdad(keys=keys, func=torch.Tensor.pin_memory),
        T.ToDeviced(keys=keys, device=device, non_blocking=True),
    ]


def _random_steps(settings: Settings) -> tuple[list, object, list]:
    """`data.augmentation` in three parts: what the crop sampler needs (padding, and its voxel indices, which
    stay in host memory), the random crop, and the augmentation of the crops."""
    steps = augmentation(settings)
    crop = next(i for i, step in enumerate(steps) if "Crop" in type(step).__name__)
    return steps[:crop], steps[crop], steps[crop + 1 :]


def validation_dataset(cases: list[dict], settings: Settings, device: torch.device | None = None):
    """Preprocessed validation volumes, cached (each rank caches only the cases it scores), on `device` when
    given (the `device` pipeline: the windows then never leave the GPU)."""
    from monai import transforms as T

    steps = preprocessing(settings)
    if device is not None:
        steps.append(T.EnsureTyped(keys=("image", "label"), device=device))
    return _cached(cases, steps, settings)


def _cached(cases: list[dict], steps: list, settings: Settings, copy_cache: bool = True):
    """MONAI's CacheDataset over `steps`: everything before the first random step runs once per volume."""
    from monai import transforms as T
    from monai.data import CacheDataset

    return CacheDataset(
        data=cases,
        transform=T.Compose(steps),
        cache_rate=settings.data.cache_rate,
        num_workers=_cache_threads(settings),
        progress=False,
        copy_cache=copy_cache,
    )


@contextlib.contextmanager
def metadata_untracked(settings: Settings):
    """MONAI's metadata tracking off while an epoch's batches are made from fully cached volumes (MONAI's
    fast-training recipe): crops and augmentation need no affine, and carrying it is most of their Python
    work, which on a GPU competes with the training step for the interpreter. Volumes still to be read and
    resampled (a cache rate below 1) need it, so it stays on for them."""
    from monai.data import get_track_meta, set_track_meta

    tracked = get_track_meta()
    set_track_meta(tracked and settings.data.cache_rate < 1.0)
    try:
        yield
    finally:
        set_track_meta(tracked)


class DataWait:
    """The seconds the training loop spent waiting for its next batch: the share of a step the data pipeline
    did not hide behind the model's work."""

    def __init__(self):
        self.seconds = 0.0

    def batches(self, loader):
        batches = iter(loader)
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            self.seconds += time.perf_counter() - asked
            if batch is None:
                return
            yield batch


def _cache_threads(settings: Settings) -> int:
    return settings.data.workers or os.cpu_count() or 1


def loader_workers(settings: Settings, on_gpu: bool) -> int:
    """Data loader processes: as set, else 4 with a GPU and 0 on CPU, where worker processes slowed a
    2-core training step from 8.5 s to 14-22 s by competing with the compute threads
    (benchmarks/bench_train.py); the augmentation itself takes ~30 ms per step."""
    if settings.data.workers is not None:
        return settings.data.workers
    return min(4, os.cpu_count() or 1) if on_gpu else 0


def training_loader(dataset, settings: Settings, pipeline: str, steps_per_rank: int, on_gpu: bool):
    """Shuffled batches of this rank's volumes; `set_epoch` makes the order a function of (seed, epoch).

    `workers`: torch's DistributedSampler over all volumes (one replica outside torchrun), batches made by
    worker processes. `device`/`host`: the rank's own shard (`dataset`) shuffled and padded to
    `steps_per_rank` volumes so every rank takes the same number of steps, batches made in one loader thread.
    """
    from monai.data import DataLoader, ThreadDataLoader, list_data_collate
    from torch.utils.data import DistributedSampler

    from unetr_cli.distributed import dist_env

    batch, seed = settings.optimisation.batch_size, settings.runtime.seed or 0
    if pipeline == "workers":
        env = dist_env()
        sampler = DistributedSampler(
            dataset, env.world_size, env.rank, shuffle=True, seed=seed, drop_last=False
        )
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=loader_workers(settings, on_gpu),
            collate_fn=list_data_collate,
            pin_memory=on_gpu,
            persistent_workers=False,
        )
    sampler = ShardSampler(len(dataset), steps_per_rank, seed)
    return ThreadDataLoader(
        dataset, batch_size=batch, sampler=sampler, num_workers=0, collate_fn=list_data_collate, buffer_size=1
    )


class ShardSampler(torch.utils.data.Sampler):
    """A rank's own shard, shuffled each epoch from (seed, epoch) as DistributedSampler shuffles, and padded
    by repeating its start up to `length` (the largest shard's size), as DistributedSampler pads."""

    def __init__(self, shard_size: int, length: int, seed: int):
        self.shard_size, self.length, self.seed, self.epoch = shard_size, length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.shard_size, generator=generator).tolist()
        order *= math.ceil(self.length / max(1, len(order)))
        return iter(order[: self.length])

    def __len__(self) -> int:
        return self.length


def shard(cases: list, rank: int, world_size: int) -> list:
    """This rank's share of `cases`: every case exactly once over all ranks, no padding."""
    return cases[rank::world_size]
