"""`unetr download` against a loopback server that imitates the hub's resolve endpoint."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import invoke, write_scan
from unetr_cli import hub
from unetr_cli.phantoms import make_phantom

COMMIT = "a" * 40
GOOD = b"unetr weights " * 5000
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


class FakeHub(BaseHTTPRequestHandler):
    """HEAD then GET /{repo}/resolve/{revision}/{file}; behaviour chosen by the file name."""

    requests: list[str] = []
    served: dict[str, bytes] = {}  # further files of unetr-test/btcv, with their sha256 as ETag

    def log_message(self, *args):
        pass

    def _route(self):
        FakeHub.requests.append(f"{self.command} {self.path}")
        parts = self.path.split("/resolve/")
        if len(parts) != 2:
            return 404, {"X-Error-Code": "RepoNotFound"}, b""
        repo, rest = parts
        filename = rest.split("/", 1)[1]
        if repo != "/unetr-test/btcv":
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b""
        if filename == "broken.pth":
            return 500, {}, b""
        if filename not in {"model.pth", "truncated.pth", "corrupt.pth", "plain.bin", *FakeHub.served}:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}, b""
        body = FakeHub.served.get(filename, GOOD)
        etag = hashlib.sha256(body).hexdigest() if filename != "plain.bin" else "w-not-a-sha"
        if filename == "corrupt.pth":
            body = bytes([GOOD[0] ^ 1]) + GOOD[1:]  # same size, different bytes
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": f'"{etag}"',
            "Content-Length": str(len(body)),
            "Accept-Ranges": "bytes",
        }
        if filename == "truncated.pth" and self.command == "GET":
            return 200, headers, body[: len(body) // 3]
        return 200, headers, body

    def do_HEAD(self):
        status, headers, _ = self._route()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def do_GET(self):
        status, headers, body = self._route()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        if "Content-Length" in headers and int(headers["Content-Length"]) > len(body):
            self.close_connection = True


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "5")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the hub client's retry back-off
    FakeHub.requests = []
    FakeHub.served = {}
    yield server
    server.shutdown()


@pytest.fixture
def registry(monkeypatch):
    entry = hub.KnownModel("test-btcv", "unetr-test/btcv", "corrupt.pth", "main", GOOD_SHA, 16, "btcv-13")
    monkeypatch.setattr(hub, "REGISTRY", {entry.name: entry})
    return entry


def test_download_places_the_file_and_prints_its_path(fake_hub, tmp_path):
    to = tmp_path / "pretrained_models"
    result = invoke("download", "unetr-test/btcv", "--filename", "model.pth", "--to", to)
    assert result.exit_code == 0, result.output
    assert (to / "model.pth").read_bytes() == GOOD
    assert str((to / "model.pth").resolve()) in result.stdout


def test_cached_file_works_offline(fake_hub, tmp_path, monkeypatch):
    assert (
        invoke("download", "unetr-test/btcv", "--filename", "model.pth", "--to", tmp_path / "a").exit_code
        == 0
    )
    FakeHub.requests = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke("download", "unetr-test/btcv", "--filename", "model.pth", "--to", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "model.pth").read_bytes() == GOOD
    assert FakeHub.requests == []


def test_offline_without_cache_says_how_to_fetch(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke("download", "unetr-test/btcv", "--filename", "model.pth", "--to", tmp_path / "a")
    assert result.exit_code == 1
    assert "not in the local cache and HF_HUB_OFFLINE is set" in result.stderr
    assert "unetr download unetr-test/btcv --filename model.pth" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("repo", "filename", "expected"),
    [
        ("unetr-test/nothing", "model.pth", "unetr-test/nothing: repository not found"),
        ("unetr-test/btcv", "missing.pth", "unetr-test/btcv/missing.pth: no such file in the repository"),
        ("unetr-test/btcv", "broken.pth", "the hub answered HTTP 500"),
        ("unetr-test/btcv", "truncated.pth", "download failed"),
        ("unetr-test/btcv", "corrupt.pth", "sha256 mismatch"),
    ],
)
def test_download_failures_leave_nothing_behind(fake_hub, tmp_path, repo, filename, expected):
    to = tmp_path / "pretrained_models"
    result = invoke("download", repo, "--filename", filename, "--to", to)
    assert result.exit_code == 1, result.output
    assert expected in result.stderr
    assert not (to / filename).exists()
    assert "Traceback" not in result.output


def test_registry_entry_is_verified_by_its_sha256(fake_hub, tmp_path, registry):
    result = invoke("download", "test-btcv", "--to", tmp_path / "m")
    assert result.exit_code == 1 and "sha256 mismatch" in result.stderr
    assert not list((tmp_path / "hf").rglob("corrupt.pth"))  # the bad file is gone from the cache too
    listing = invoke("download", "--list")
    assert "test-btcv" in listing.stdout and "unetr-test/btcv" in listing.stdout


def test_files_without_a_content_hash_are_accepted_by_size(fake_hub, tmp_path):
    assert (
        invoke("download", "unetr-test/btcv", "--filename", "plain.bin", "--to", tmp_path / "m").exit_code
        == 0
    )


def test_empty_registry_points_to_the_official_files():
    result = invoke("download", "--list")
    assert result.exit_code == 0
    assert "no UNETR BTCV weights are published on the Hugging Face hub" in result.stdout


def test_missing_parent_of_to(fake_hub, tmp_path):
    result = invoke(
        "download", "unetr-test/btcv", "--filename", "model.pth", "--to", tmp_path / "no" / "such"
    )
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_predict_with_a_hub_reference_downloads_on_demand(fake_hub, trained_run, tmp_path):
    weights = tmp_path / "local.safetensors"
    exported = invoke(
        "export", "--checkpoint", trained_run / "checkpoint_final.pt", "--safetensors", "-o", weights
    )
    assert exported.exit_code == 0, exported.output
    FakeHub.served = {"model.safetensors": weights.read_bytes()}
    phantom = make_phantom(5, (64, 64, 32))
    scan = write_scan(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    from_hub = invoke(
        "predict",
        scan,
        "-o",
        tmp_path / "hub.nii.gz",
        "--checkpoint",
        "hub:unetr-test/btcv/model.safetensors",
    )
    assert from_hub.exit_code == 0, from_hub.output
    assert any("model.safetensors" in request for request in FakeHub.requests)
    local = invoke("predict", scan, "-o", tmp_path / "local.nii.gz", "--checkpoint", weights)
    assert local.exit_code == 0, local.output
    assert np.array_equal(
        nib.load(tmp_path / "hub.nii.gz").get_fdata(), nib.load(tmp_path / "local.nii.gz").get_fdata()
    )
    sidecar = json.loads((tmp_path / "hub.json").read_text())
    cached = Path(sidecar["checkpoint"])
    assert cached.is_relative_to(tmp_path / "hf") and cached.read_bytes() == weights.read_bytes()


def test_a_server_that_never_answers_is_given_up_on(tmp_path, monkeypatch):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(32)
    accepted = []
    threading.Thread(
        target=lambda: [accepted.append(listener.accept()) for _ in range(32)], daemon=True
    ).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "1")  # the give-up comes after six of these, 6 s
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    result = invoke("download", "unetr-test/btcv", "--filename", "model.pth", "--to", tmp_path / "m")
    assert result.exit_code == 1
    assert "the hub stopped answering (nothing received for 6 s)" in result.stderr
    assert accepted
    listener.close()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["a/b/c", "--filename", "m.pth"], "a/b/c: not a valid hub repository id"),
        (["bad repo!", "--filename", "m.pth"], "bad repo!: not a valid hub repository id"),
        (
            ["unetr-test/btcv", "--filename", "../../etc/passwd"],
            "--filename ../../etc/passwd: Invalid filename",
        ),
    ],
)
def test_malformed_repository_ids_and_file_names_are_usage_errors(tmp_path, args, expected):
    result = invoke("download", *args, "--to", tmp_path / "m")
    assert result.exit_code == 2
    assert expected in result.stderr


def test_download_keeps_a_different_file_of_that_name_unless_overwrite(fake_hub, tmp_path):
    to = tmp_path / "pretrained_models"
    to.mkdir()
    (to / "model.pth").write_bytes(b"the user's own weights")
    kept = invoke("download", "unetr-test/btcv", "--filename", "model.pth", "--to", to)
    assert kept.exit_code == 1 and "holds other bytes than the download" in kept.stderr
    assert (to / "model.pth").read_bytes() == b"the user's own weights"
    replaced = invoke("download", "unetr-test/btcv", "--filename", "model.pth", "--to", to, "--overwrite")
    assert replaced.exit_code == 0 and (to / "model.pth").read_bytes() == GOOD
    again = invoke("download", "unetr-test/btcv", "--filename", "model.pth", "--to", to)
    assert again.exit_code == 0  # the same bytes already there: nothing to refuse
