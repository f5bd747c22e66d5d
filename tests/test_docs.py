"""Every `unetr` command line in the README and in docs/ runs, page by page, in a sandbox that holds what the
lines name: phantom scans and labels, a BTCV-layout dataset, a trained run, the official weights' formats, a
DICOM series, and a loopback hub. `UNETR_*` variables keep every model and recipe tiny (the environment beats
presets), so a line written for a real machine runs here in seconds with its meaning intact. Lines that need
minutes have their own test (`LONG`)."""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import invoke, write_scan

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The tiny-cpu preset's model and recipe, as variables: they win over `--preset btcv` and the defaults.
TINY = {
    "UNETR_MODEL__IMG_SIZE": "32",
    "UNETR_MODEL__HIDDEN_SIZE": "96",
    "UNETR_MODEL__MLP_DIM": "384",
    "UNETR_MODEL__NUM_HEADS": "4",
    "UNETR_MODEL__NORM_NAME": "batch",
    "UNETR_DATA__SPACING": "[4.0, 4.0, 5.0]",
    "UNETR_DATA__WORKERS": "0",
    "UNETR_OPTIMISATION__MAX_EPOCHS": "2",
    "UNETR_OPTIMISATION__WARMUP_EPOCHS": "1",
    "UNETR_OPTIMISATION__VAL_EVERY": "1",
}
LONG = {"unetr demo": "tests/commands/test_demo.py runs it with its training time capped"}


def command_lines(page: Path) -> list[str]:
    """The `unetr` lines of a page's bash blocks (an environment assignment may come first)."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if re.match(r"^([A-Z_]+=\S+ )*unetr( |$)", line)]


def config_files(page: Path) -> dict[str, str]:
    """The page's TOML blocks whose first line names their file (`# train.toml ...`)."""
    blocks = re.findall(r"```toml\n# (\S+\.toml)\b[^\n]*\n(.*?)```", page.read_text(), flags=re.DOTALL)
    return dict(blocks)


class Hub(BaseHTTPRequestHandler):
    """GET /{owner}/{repo}/resolve/{revision}/{file} from a folder, as the hub answers for LFS files."""

    folder: Path

    def log_message(self, *args):
        pass

    def _answer(self, body: bool) -> None:
        repo, _, rest = self.path.lstrip("/").partition("/resolve/")
        path = Hub.folder / repo / rest.split("/", 1)[-1]
        if not path.is_file():
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        for key, value in {
            "X-Repo-Commit": "a" * 40,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Content-Length": str(len(data)),
        }.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)


@pytest.fixture(scope="module")
def base(trained_run, tiny_dataset, tmp_path_factory) -> Path:
    """What the pages' lines name, made once: copied for each page."""
    import torch

    from unetr_cli.checkpoint import safe_load
    from unetr_cli.export import export_safetensors, export_torchscript
    from unetr_cli.model import model_with_weights
    from unetr_cli.phantoms import make_phantom
    from unetr_cli.phantoms.dicom_series import write_ct_series
    from unetr_cli.settings import Settings

    root = tmp_path_factory.mktemp("docs")
    for index in (1, 2):
        phantom = make_phantom(100 + index, (64, 64, 32))
        write_scan(root / "scans" / f"case{index}.nii.gz", phantom.image, phantom.affine)
        write_scan(root / "labels" / f"case{index}.nii.gz", phantom.label, phantom.affine)
    phantom = make_phantom(103, (64, 64, 32))
    write_scan(root / "scan.nii.gz", phantom.image, phantom.affine)
    write_scan(root / "truth.nii.gz", phantom.label, phantom.affine)
    write_scan(root / "unetr-demo" / "held_out" / "scan.nii.gz", phantom.image, phantom.affine)
    write_ct_series(phantom.image, phantom.affine, root / "dicom" / "patient1")
    shutil.copytree(tiny_dataset, root / "dataset0")
    shutil.copytree(tiny_dataset, root / "my_organs")  # a label set of its own: five classes
    for path in (root / "my_organs" / "labelsTr").glob("*.nii.gz"):
        image = nib.load(path)
        labels = np.asanyarray(image.dataobj)
        nib.save(nib.Nifti1Image(np.where(labels > 4, 0, labels).astype(np.uint8), image.affine), path)
    shutil.copytree(trained_run, root / "runs" / "btcv", ignore=shutil.ignore_patterns(".lock"))
    shutil.copytree(trained_run, root / "unetr-demo" / "run", ignore=shutil.ignore_patterns(".lock"))
    stored = safe_load(trained_run / "checkpoint_final.pt")
    official = root / "pretrained_models"
    official.mkdir()
    torch.save(
        stored["model"], official / "UNETR_model_best_acc.pth"
    )  # the official file's format: a raw state dict
    settings = Settings.from_dict(stored["settings"])
    model = model_with_weights(settings.model, stored["model"])
    export_torchscript(model, settings, official / "UNETR_model_best_acc.pt")
    export_safetensors(model, settings, root / "hub" / "OWNER" / "REPO" / "model.safetensors")
    export_safetensors(model, settings, root / "model.safetensors")
    torch.save(stored["model"], root / "model.pth")
    (root / "token.txt").write_text("a-long-random-token-for-the-docs\n")  # unetr serve --token-file
    return root


@pytest.fixture
def hub(base, monkeypatch):
    Hub.folder = base / "hub"
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_pages_have_command_lines():
    assert all(command_lines(page) for page in PAGES if page.name != "development.md")
    assert "unetr train --data-dir data --logdir runs/first" in command_lines(ROOT / "README.md")


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_line_runs(page, base, hub, tmp_path, monkeypatch):
    sandbox = tmp_path / "sandbox"
    shutil.copytree(base, sandbox, symlinks=True)
    monkeypatch.chdir(sandbox)
    for name, text in config_files(page).items():  # a page's ```toml block that names its file
        (sandbox / name).write_text(text)
    for line in command_lines(page):
        if line in LONG:
            continue
        words = shlex.split(line, comments=True)
        assignments = {}
        while "=" in words[0] and words[0] != "unetr":
            key, _, value = words.pop(0).partition("=")
            assignments[key] = value
        env = {**TINY, **assignments, "HF_ENDPOINT": hub, "HF_HOME": str(tmp_path / "hf")}
        if words[1] == "serve":
            assert serves(words[1:], env, sandbox) == 0, f"{page.name}: {line}"
            continue
        result = invoke(*words[1:], env=env)
        assert result.exit_code == 0, f"{page.name}: {line}\n{result.output[-3000:]}"


def serves(args: list[str], env: dict[str, str], sandbox: Path) -> int:
    """Run a `unetr serve` line as the process it is, on loopback ports of the test's choosing, until its
    model is ready; then stop it as systemd would (SIGTERM) and return its exit code."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    port = free_port()
    args = [*args, "--port", str(port), "--host", "127.0.0.1", "--state", str(sandbox / "serve-state")]
    if "--dicom-port" in args:
        args += ["--dicom-port", str(free_port())]
    log = sandbox / f"serve-{port}.log"
    with open(log, "wb") as out:
        service = subprocess.Popen(
            [sys.executable, "-m", "unetr_cli", *args],
            env={**os.environ, **env},
            cwd=sandbox,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline, status = time.monotonic() + 180, None
    while status != "ok":
        assert service.poll() is None and time.monotonic() < deadline, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
                status = json.loads(answer.read())["status"]
        except OSError:
            time.sleep(0.2)
    service.terminate()
    return service.wait(timeout=120)
