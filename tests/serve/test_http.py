"""The HTTP API of `unetr serve` as a program uses it: submit, follow, fetch; the same checks and lines as
`unetr predict`; health, metrics and the API description; the bearer token."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import REALDATA, dicom_errors, invoke, predict, write_scan
from tests.serve.conftest import Service, api_only
from unetr_cli.phantoms import make_phantom
from unetr_cli.phantoms.dicom_series import write_ct_series

SHAPE = (64, 64, 32)


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    phantom = make_phantom(31, SHAPE, orientation="LPS")
    return write_scan(tmp_path_factory.mktemp("upload") / "case31.nii.gz", phantom.image, phantom.affine)


def _labels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _jobs_on_disk(service: Service) -> set[str]:
    return {p.name for p in (service.state / "jobs").iterdir()}


def test_a_submitted_scan_gets_the_label_map_and_report_predict_gives(service, checkpoint, scan, tmp_path):
    submitted = service.submit(scan)
    assert submitted.status == 202, submitted.body
    job = service.finished(submitted.json()["id"])
    assert job["state"] == "done" and job["error"] is None and job["name"] == "case31.nii.gz"

    fetched = service.get(f"/jobs/{job['id']}/result")
    assert fetched.status == 200 and "case31_seg.nii.gz" in fetched.headers["content-disposition"]
    (tmp_path / "served.nii.gz").write_bytes(fetched.body)
    assert predict(checkpoint, scan, "-o", tmp_path / "predicted.nii.gz", "--report", "-q").exit_code == 0
    served, predicted = nib.load(tmp_path / "served.nii.gz"), nib.load(tmp_path / "predicted.nii.gz")
    assert np.array_equal(served.affine, predicted.affine) and served.get_data_dtype() == np.uint8
    assert np.array_equal(_labels(tmp_path / "served.nii.gz"), _labels(tmp_path / "predicted.nii.gz"))
    assert (_labels(tmp_path / "served.nii.gz") == 6).any()

    report = json.loads((tmp_path / "predicted_stats.json").read_text())
    assert job["flagged"] == report["flagged"] and job["orientation"] == report["orientation"]
    assert [(o["organ"], o["voxels"], o["flags"]) for o in job["organs"]] == [
        (o["organ"], o["voxels"], o["flags"]) for o in report["organs"]
    ]

    nrrd = service.get(f"/jobs/{job['id']}/result?format=seg-nrrd")
    assert nrrd.status == 200
    (tmp_path / "served.seg.nrrd").write_bytes(nrrd.body)
    from unetr_cli.volumes import load_volume

    labels, info = load_volume(tmp_path / "served.seg.nrrd", dtype=None)
    assert np.array_equal(np.asarray(labels), _labels(tmp_path / "predicted.nii.gz"))
    assert np.allclose(info.affine, predicted.affine, atol=1e-4)
    refused = service.get(f"/jobs/{job['id']}/result?format=dicom-seg")
    assert refused.status == 404 and "comes as nifti, seg-nrrd" in refused.json()["detail"]


def test_a_zipped_dicom_series_gets_a_dicom_seg_of_that_series(service, checkpoint, tmp_path):
    phantom = make_phantom(32, SHAPE, orientation="LPS")
    files = write_ct_series(phantom.image, phantom.affine, tmp_path / "series")
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as bundle:
        for path in files:
            bundle.write(path, f"DICOM/{path.name}")
    job = service.finished(service.submit(tmp_path / "series.zip").json()["id"])
    assert job["state"] == "done", job
    assert set(job["results"]) == {"nifti", "seg-nrrd", "dicom-seg"}

    fetched = service.get(job["results"]["dicom-seg"])
    assert fetched.status == 200
    (tmp_path / "served.dcm").write_bytes(fetched.body)
    import pydicom

    seg, source = pydicom.dcmread(tmp_path / "served.dcm"), pydicom.dcmread(files[0])
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert dicom_errors(tmp_path / "served.dcm") == []

    assert predict(checkpoint, tmp_path / "series", "-o", tmp_path / "predicted.nii.gz", "-q").exit_code == 0
    from unetr_cli.dicom import read_segmentation

    labels, affine, _ = read_segmentation(tmp_path / "served.dcm")
    expected = _labels(tmp_path / "predicted.nii.gz")
    assert labels.shape == expected.shape and np.array_equal(labels, expected)


@pytest.mark.parametrize(
    "name, status, says",
    [
        ("notes.txt", 415, "notes.txt: not a scan file: expected NIfTI, NRRD, MetaImage or a .zip"),
        ("slice.dcm", 422, "slice.dcm: is one DICOM slice: upload a .zip of its series"),
        ("CT_pitch.nii.gz", 422, "CT_pitch.nii.gz"),  # uint8 0-255: not Hounsfield units, as predict says
        ("big.nii", 413, "big.nii: larger than the service accepts (1 MiB)"),
        ("mr.zip", 422, "mr.zip: skipped series"),
    ],
)
def test_a_bad_upload_is_a_4xx_with_one_line_and_leaves_nothing(service, tmp_path, name, status, says):
    upload = tmp_path / name
    if name == "notes.txt":
        upload.write_text("not a scan\n")
    elif name == "slice.dcm":
        phantom = make_phantom(33, (32, 32, 4))
        upload.write_bytes(write_ct_series(phantom.image, phantom.affine, tmp_path / "s")[0].read_bytes())
    elif name == "CT_pitch.nii.gz":
        upload.write_bytes((REALDATA / "nifti_ct_pitch" / name).read_bytes())
    elif name == "big.nii":
        upload.write_bytes(b"\0" * (3 << 20))
    else:
        with zipfile.ZipFile(upload, "w") as bundle:
            bundle.write(REALDATA / "mr_mosaic" / "9.dcm", "9.dcm")
    before = _jobs_on_disk(service)
    answer = service.submit(upload)
    assert answer.status == status, answer.body
    line = answer.json()["detail"]
    assert says in line and "\n" not in line and str(service.state) not in line
    if name == "CT_pitch.nii.gz":  # the very line predict prints, naming the upload as the client did
        refused = invoke("predict", upload, "-o", tmp_path / "out.nii.gz", "--checkpoint", service.checkpoint)
        assert refused.exit_code == 1 and line in refused.stderr.replace("\n", " ")
    assert _jobs_on_disk(service) == before


def test_health_metrics_docs_and_unknown_jobs(service):
    health = service.get("/health").json()
    assert health["status"] == "ok" and health["devices"] == {"cpu": "ready"}
    metrics = service.get("/metrics").body.decode()
    assert 'unetr_model_ready{device="cpu"} 1' in metrics and 'unetr_jobs{state="queued"}' in metrics
    assert "# TYPE unetr_jobs gauge" in metrics
    api = service.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/result", "/health", "/metrics"} <= set(api["paths"])
    assert service.get("/docs").status == 200
    assert service.get("/jobs/0123456789abcdef").status == 404
    assert service.get("/jobs/..%2F..%2Fetc").status == 404
    assert service.get("/").body.startswith(b"<!doctype html>")


def test_a_token_guards_every_request_but_the_page_and_health(tmp_path):
    token = "s3cret-token-for-the-test"
    with api_only(tmp_path / "state", token=token) as server:
        assert server.get("/health").status == 200 and server.get("/").status == 200
        for path in ("/metrics", "/jobs", "/jobs/0123456789abcdef"):
            assert server.get(path).status == 401
            wrong = server.get(path, headers={"Authorization": "Bearer not-the-token"})
            assert wrong.status == 401 and "bearer token" in wrong.json()["detail"]
        assert server.request("/jobs?name=x", data=b"x").status == 401
        assert not any((tmp_path / "state" / "jobs").iterdir())  # nothing stored for a refused caller
        assert server.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status == 200


@pytest.mark.parametrize(
    "args, says",
    [
        (["--host", "0.0.0.0"], "--host 0.0.0.0: others could reach the service; give --token-file FILE"),
        (
            ["--dicom-port", "11112", "--dicom-send", "PACS:104"],
            "--dicom-send PACS:104: expected AE@HOST:PORT",
        ),
        (["--dicom-port", "11112", "--dicom-ae", "A-TITLE-LONGER-THAN-16"], "1 to 16 characters"),
    ],
)
def test_unsafe_or_malformed_service_options_are_refused_before_any_model(tmp_path, args, says):
    result = invoke("serve", "--checkpoint", tmp_path / "absent.pt", "--state", tmp_path / "s", *args)
    assert result.exit_code == 2 and says in result.stderr.replace("\n", " ")
    assert "absent.pt" not in result.stderr and not (tmp_path / "s").exists()


def test_a_short_token_file_is_refused(tmp_path):
    (tmp_path / "token").write_text("short\n")
    result = invoke("serve", "--checkpoint", tmp_path / "a.pt", "--token-file", tmp_path / "token")
    assert result.exit_code == 2 and "the token must be at least 16 characters" in result.stderr


def test_a_full_disk_refuses_the_upload_with_507_and_keeps_serving(tmp_path, monkeypatch, scan):
    import shutil

    real = shutil.disk_usage
    with api_only(tmp_path / "state") as client:
        monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=100 << 20))
        full = client.submit(scan)
        assert full.status == 507
        assert "case31.nii.gz: the service's disk is full (100 MiB free)" in full.json()["detail"]
        assert not any((tmp_path / "state" / "jobs").iterdir())
        monkeypatch.setattr(shutil, "disk_usage", real)
        assert client.submit(scan).status == 202  # room again: accepted


def test_a_port_in_use_is_refused_before_any_model(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = invoke("serve", "--checkpoint", tmp_path / "absent.pt", "--port", port)
    assert result.exit_code == 2 and "absent.pt" not in result.stderr
    assert f"--port {port}: cannot listen on 127.0.0.1:{port} (Address already in use)" in result.stderr


def test_without_the_serve_extra_the_line_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    result = invoke("serve", "--checkpoint", tmp_path / "absent.pt")
    assert result.exit_code == 2
    assert "unetr serve needs uvicorn: pip install 'unetr[serve]'" in result.stderr.replace("\n", " ")


def test_a_clients_name_is_shown_but_never_a_path_or_a_header(service, scan):
    name = '../../x"\r\nX-Injected: 1;.nii.gz'
    job = service.finished(service.submit(scan, name=name).json()["id"])
    assert job["state"] == "done" and job["name"] == name  # shown as given
    fetched = service.get(f"/jobs/{job['id']}/result")
    assert fetched.status == 200 and "X-Injected" not in fetched.headers
    assert 'filename="x___X-Injected__1__seg.nii.gz"' in fetched.headers["content-disposition"]
    assert not (service.state.parent / "x").exists() and (service.state / "jobs" / job["id"]).is_dir()
