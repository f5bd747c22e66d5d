"""Nothing lost: the job store's states across a restart, expiry, and a service killed with SIGKILL that
finishes every accepted job when it starts again, with the results `unetr predict` gives."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import predict, write_scan
from tests.serve.conftest import Service
from unetr_cli.phantoms import make_phantom
from unetr_cli.serve.jobs import JobStore


def test_a_restart_queues_running_jobs_again_and_drops_unfinished_uploads(tmp_path):
    store = JobStore(tmp_path / "state")
    accepted, arriving = store.receive("a.nii.gz"), store.receive("b.nii.gz")
    store.queue(accepted.id)
    assert [job.id for job in store.claim(4)] == [accepted.id] and store.claim(4) == []
    store.close()

    store = JobStore(tmp_path / "state")  # as a new process finds it
    assert store.recover() == (1, 1)
    job = store.get(accepted.id)
    assert job.state == "queued" and "restart" in job.stage and job.input.is_dir()
    assert store.get(arriving.id) is None and not arriving.folder.exists()
    assert [claimed.id for claimed in store.claim(4)] == [accepted.id]


def test_finished_jobs_expire_with_their_files_and_others_stay(tmp_path):
    store = JobStore(tmp_path / "state")
    done, waiting = store.receive("a"), store.receive("b")
    store.queue(done.id)
    store.queue(waiting.id)
    store.claim(1)
    store.finish(done.id)
    assert store.expire(3600) == []
    assert store.expire(0) == [done.id] and not done.folder.exists()
    assert store.get(waiting.id).state == "queued" and waiting.folder.exists()
    assert store.counts() == {"receiving": 0, "queued": 1, "running": 0, "done": 0, "failed": 0}


@pytest.mark.slow
def test_a_service_killed_with_sigkill_finishes_every_accepted_job(checkpoint, tmp_path):
    scans = []
    for index, shape in enumerate([(256, 256, 160), (64, 64, 32), (80, 64, 40)]):
        phantom = make_phantom(40 + index, shape, orientation="LPS")
        scans.append(write_scan(tmp_path / f"case{index}.nii.gz", phantom.image, phantom.affine))
    service = Service(checkpoint, tmp_path / "state", "--max-upload-mib", "64").start()
    ids = [service.submit(scan).json()["id"] for scan in scans]
    service.wait_until(lambda: service.get(f"/jobs/{ids[0]}").json()["state"] == "running", "a running job")
    service.kill()
    store = JobStore(tmp_path / "state")
    assert {store.get(job_id).state for job_id in ids} <= {"queued", "running"}
    running = store.counts()["running"]
    store.close()
    assert running >= 1

    service.start()
    assert f"{running} job(s) queued again" in service.output()
    finished = [service.finished(job_id) for job_id in ids]
    assert [job["state"] for job in finished] == ["done"] * 3, finished
    for scan, job in zip(scans, finished, strict=True):
        served = tmp_path / f"{job['id']}.nii.gz"
        served.write_bytes(service.get(f"/jobs/{job['id']}/result").body)
        expected = tmp_path / f"{scan.name.split('.')[0]}_predicted.nii.gz"
        assert predict(checkpoint, scan, "-o", expected, "-q").exit_code == 0
        assert np.array_equal(
            np.asanyarray(nib.load(served).dataobj), np.asanyarray(nib.load(expected).dataobj)
        )
    assert service.stop() == 0
    assert "unetr serve: stopped" in service.output()
