"""The engine: a job that fails (out of memory, here) fails alone; the service keeps segmenting."""

from __future__ import annotations

import shutil

import torch

from tests.conftest import write_scan
from unetr_cli.phantoms import make_phantom
from unetr_cli.serve.engine import Engine
from unetr_cli.serve.jobs import JobStore
from unetr_cli.serve.uploads import UPLOAD, accept


def _queued(store: JobStore, scan) -> str:
    job = store.receive(scan.name)
    shutil.copy(scan, job.input / UPLOAD)
    return accept(store, job).id


def test_out_of_memory_fails_its_job_and_the_engine_goes_on(checkpoint, tmp_path, monkeypatch):
    from unetr_cli.commands.weights import WeightsOptions, model_settings
    from unetr_cli.inference import batch
    from unetr_cli.settings import SettingsSources

    scans = []
    for index in range(3):
        phantom = make_phantom(70 + index, (64, 64, 32))
        scans.append(write_scan(tmp_path / f"case{index}.nii.gz", phantom.image, phantom.affine))
    store = JobStore(tmp_path / "state")
    weights = WeightsOptions(str(checkpoint)).read()
    settings = model_settings(weights, SettingsSources(), {"inference.device": "cpu"})
    done = []
    engine = Engine(store, settings, weights, torch.device("cpu"), 4, done.append)
    assert engine.load() and engine.state == "ready"

    real, calls = batch.segment_scan, []

    def short_of_memory(scan, *args, **kwargs):
        calls.append(scan)
        if len(calls) == 1:
            raise MemoryError()
        return real(scan, *args, **kwargs)

    monkeypatch.setattr(batch, "segment_scan", short_of_memory)
    first, second = _queued(store, scans[0]), _queued(store, scans[1])
    assert engine.segment_queued() == 2
    failed = store.get(first)
    assert failed.state == "failed" and failed.error == "case0.nii.gz: not enough memory"
    assert store.get(second).state == "done" and [job.id for job in done] == [second]
    third = _queued(store, scans[2])
    assert engine.segment_queued() == 1 and store.get(third).state == "done"
    assert engine.segment_queued() == 0


def test_one_engine_per_visible_gpu_for_auto_and_one_for_a_named_device(monkeypatch):
    from unetr_cli.serve.service import serving_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert serving_devices("auto") == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert serving_devices("cpu") == [torch.device("cpu")]
