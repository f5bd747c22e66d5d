"""`unetr serve` as its users meet it: a real process on a loopback port, spoken to over HTTP (urllib) and
DICOM (dcmtk's programs). Every wait is bounded: a service that does not answer fails the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("pynetdicom")

WAIT_S = 180.0  # the longest any test waits for the service (a model load or a job on a busy CPU)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict = field(default_factory=dict)

    def json(self):
        return json.loads(self.body)


class Service:
    """One `unetr serve` process with its state folder and log."""

    def __init__(self, checkpoint: Path, state: Path, *extra: str, token: str | None = None):
        self.checkpoint, self.state, self.extra, self.token = checkpoint, state, extra, token
        self.port = free_port()
        self.log = state.parent / f"{state.name}-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: bool = True) -> Service:
        args = [sys.executable, "-m", "unetr_cli", "serve", "--checkpoint", str(self.checkpoint)]
        args += ["--state", str(self.state), "--port", str(self.port), "--device", "cpu", *self.extra]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        if ready:
            self.wait_until(lambda: self._health() == "ok", "its model to load")
        return self

    def _health(self) -> str | None:
        if self.process.poll() is not None:
            raise AssertionError(f"unetr serve ended with {self.process.returncode}:\n{self.output()}")
        try:
            return self.get("/health").json()["status"]
        except (OSError, ValueError):
            return None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> Answer:
        headers = dict(headers or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Answer(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as refused:
            return Answer(refused.code, refused.read(), dict(refused.headers))

    def get(self, path: str, **kwargs) -> Answer:
        return self.request(path, **kwargs)

    def submit(self, path: Path, name: str | None = None) -> Answer:
        return self.request(f"/jobs?name={urllib.parse.quote(name or path.name)}", data=path.read_bytes())

    def finished(self, job_id: str) -> dict:
        """The job once it is done or failed."""
        found = {}

        def over() -> bool:
            found.update(self.get(f"/jobs/{job_id}").json())
            return found["state"] in ("done", "failed")

        self.wait_until(over, f"job {job_id} to finish")
        return found

    def wait_until(self, condition, what: str, wait_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + wait_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what}:\n{self.output()}")
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM, as systemd stops a service; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: nothing runs after it
        self.process.wait(timeout=30)


@contextmanager
def api_only(state: Path, token: str | None = None, max_upload_bytes: int = 1 << 30):
    """The HTTP API over a job store in this process, with no model (nothing is segmented): for what the API
    decides on its own (tokens, sizes, room on disk). Yields a `Service` whose HTTP helpers reach it."""
    import threading

    import uvicorn

    from unetr_cli.serve.http import create_app
    from unetr_cli.serve.jobs import JobStore

    app = create_app(JobStore(state), [], token, max_upload_bytes, False)
    client = Service(state / "none.pt", state)
    client.port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=client.port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        client.wait_until(lambda: server.started, "the server to start", 30)
        yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def checkpoint(trained_run) -> Path:
    return trained_run / "checkpoint_final.pt"


@pytest.fixture(scope="module")
def service(checkpoint, tmp_path_factory):
    """One service for a module's tests, uploads up to 1 MiB."""
    running = Service(checkpoint, tmp_path_factory.mktemp("serve") / "state", "--max-upload-mib", "1").start()
    yield running
    running.stop()
