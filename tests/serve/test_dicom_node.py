"""The DICOM node against DICOM programs nobody here wrote: dcmtk's echoscu and storescu send, its storescp
receives the DICOM-SEG; Orthanc (a PACS) pushes a series and gets the SEG back. Both are Debian packages
(.ci/run installs them); each test is skipped where its program is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.conftest import REALDATA, dicom_errors, predict
from tests.serve.conftest import Service, free_port
from unetr_cli.dicom import read_segmentation
from unetr_cli.phantoms import make_phantom
from unetr_cli.phantoms.dicom_series import write_ct_series

DCMTK = Path("/usr/bin")  # absolute: pynetdicom installs scripts of the same names in the environment
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
needs_dcmtk = pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="needs dcmtk (apt install dcmtk)")
needs_orthanc = pytest.mark.skipif(not Path(ORTHANC).exists(), reason="needs Orthanc (apt install orthanc)")


def _dcmtk(program: str, *options, calling="MODALITY", port: int, files=()) -> subprocess.CompletedProcess:
    command = [str(DCMTK / program), "-aet", calling, "-aec", "UNETR", *options, "127.0.0.1", str(port)]
    command += [str(path) for path in files]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _series(tmp_path: Path, seed: int) -> list[Path]:
    phantom = make_phantom(seed, (64, 64, 32), orientation="LPS")
    return write_ct_series(phantom.image, phantom.affine, tmp_path / f"series{seed}")


def _check_segmentation(seg_path: Path, series: list[Path], checkpoint: Path, tmp_path: Path) -> None:
    """The SEG references the series sent, is valid, and holds the labels `unetr predict` gives it."""
    seg, source = pydicom.dcmread(seg_path), pydicom.dcmread(series[0])
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert dicom_errors(seg_path) == []
    expected = tmp_path / "predicted.nii.gz"
    assert predict(checkpoint, series[0].parent, "-o", expected, "-q").exit_code == 0
    import nibabel as nib

    labels, _, _ = read_segmentation(seg_path)
    assert np.array_equal(labels, np.asanyarray(nib.load(expected).dataobj))


@needs_dcmtk
@pytest.mark.slow
def test_storescu_sends_a_series_and_storescp_receives_its_dicom_seg(checkpoint, tmp_path):
    received, scp_port, port = tmp_path / "received", free_port(), free_port()
    received.mkdir()
    scp = subprocess.Popen(
        [str(DCMTK / "storescp"), "-aet", "STORESCP", "-od", str(received), str(scp_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    node = ("--dicom-port", str(port), "--dicom-idle", "1", "--dicom-allow", "MODALITY")
    service = Service(checkpoint, tmp_path / "state", *node, "--dicom-send", f"STORESCP@127.0.0.1:{scp_port}")
    try:
        service.start()
        assert _dcmtk("echoscu", port=port).returncode == 0  # C-ECHO
        stranger = _dcmtk("echoscu", calling="STRANGER", port=port)
        assert stranger.returncode != 0 and "rejected" in (stranger.stdout + stranger.stderr).lower()

        series = _series(tmp_path, 50)
        sent = _dcmtk("storescu", "+sd", port=port, files=[series[0].parent])
        assert sent.returncode == 0, sent.stderr
        mr = _dcmtk("storescu", "-xv", port=port, files=[REALDATA / "mr_mosaic" / "9.dcm"])  # JPEG 2000
        assert mr.returncode == 0, mr.stderr  # acknowledged, then skipped
        service.wait_until(lambda: any(received.glob("SG*")), "the DICOM-SEG at storescp")
        service.wait_until(lambda: "(MR, 1 files): not CT" in service.output(), "the MR series skipped")

        _check_segmentation(next(received.glob("SG*")), series, checkpoint, tmp_path)
        jobs = service.get("/jobs").json()
        assert len(jobs) == 1 and jobs[0]["origin"] == "dicom"  # the MR made no job
        service.wait_until(
            lambda: (service.get("/jobs").json()[0]["delivery"] or "").startswith("sent"), "the delivery"
        )
        assert service.get("/jobs").json()[0]["delivery"] == f"sent to STORESCP@127.0.0.1:{scp_port}"
        for inside in ("jobs", "incoming"):  # the log names jobs and senders, not the service's folders
            assert str(service.state / inside) not in service.output()
    finally:
        service.stop()
        scp.terminate()
        scp.wait(timeout=30)


def _orthanc(tmp_path: Path, unetr_port: int) -> tuple[subprocess.Popen, str, int]:
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "unetr-test",
        "StorageDirectory": str(tmp_path / "orthanc"),
        "IndexDirectory": str(tmp_path / "orthanc"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"unetr": ["UNETR", "127.0.0.1", unetr_port]},
        "Plugins": [],
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [ORTHANC, str(tmp_path / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return process, f"http://127.0.0.1:{http_port}", dicom_port


def _rest(url: str, data: bytes | None = None):
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as answer:
        return json.loads(answer.read())


@needs_orthanc
@pytest.mark.slow
def test_orthanc_pushes_a_series_and_gets_the_dicom_seg_back(checkpoint, tmp_path):
    port = free_port()
    orthanc, rest, orthanc_dicom = _orthanc(tmp_path, port)
    # No --dicom-send: the SEG goes back to the sender (its AE title and address) at its DICOM port.
    node = ("--dicom-port", str(port), "--dicom-idle", "1", "--dicom-send-port", str(orthanc_dicom))
    service = Service(checkpoint, tmp_path / "state", *node)
    try:
        service.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                _rest(f"{rest}/system")
                break
            except OSError:
                assert time.monotonic() < deadline, "Orthanc did not start"
                time.sleep(0.2)
        series = _series(tmp_path, 51)
        for path in series:
            stored = _rest(f"{rest}/instances", path.read_bytes())
        pushed = _rest(f"{rest}/modalities/unetr/store", stored["ParentSeries"].encode())
        assert pushed["FailedInstancesCount"] == 0 and pushed["InstancesCount"] == len(series)

        def segmentations() -> list[str]:
            found = []
            for uid in _rest(f"{rest}/series"):
                described = _rest(f"{rest}/series/{uid}")
                if described["MainDicomTags"].get("Modality") == "SEG":
                    found += described["Instances"]
            return found

        service.wait_until(lambda: segmentations() != [], "the DICOM-SEG in Orthanc")
        (tmp_path / "seg.dcm").write_bytes(
            urllib.request.urlopen(f"{rest}/instances/{segmentations()[0]}/file", timeout=60).read()
        )
        _check_segmentation(tmp_path / "seg.dcm", series, checkpoint, tmp_path)
        job = service.get("/jobs").json()[0]
        assert job["delivery"] == f"sent to ORTHANC@127.0.0.1:{orthanc_dicom}"
    finally:
        service.stop()
        orthanc.terminate()
        orthanc.wait(timeout=30)
