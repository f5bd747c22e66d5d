"""`unetr serve` as one process: the job store recovered from its state folder, one engine per device with
the model loaded once, the HTTP API and web page (uvicorn), the DICOM node when asked for, and a janitor that
removes expired results. Ctrl-C or SIGTERM stops taking work, lets each engine finish the batch in hand, and
ends; a job still running when the process is killed is queued again at the next start."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from unetr_cli.console import Reporter
from unetr_cli.errors import UsageError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
JANITOR_S = 60.0


@dataclass(frozen=True)
class ServeOptions:
    """Where the service listens and keeps its state, who may use it, and its limits."""

    state: Path = Path("unetr-serve")
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    insecure: bool = False
    max_upload_bytes: int = 2 << 30
    keep_hours: float = 24.0
    batch: int = 4
    allow_non_ct: bool = False
    dicom: object = None  # dicom_node.NodeOptions, or None for no DICOM node
    devices: list = field(default_factory=list)

    def check(self) -> None:
        """Safe by default: another address than this machine's needs a token, or --insecure said aloud."""
        if self.host not in LOCAL_HOSTS and self.token is None and not self.insecure:
            raise UsageError(
                f"--host {self.host}: others could reach the service; give --token-file FILE (a bearer "
                "token), or --insecure on a network you trust"
            )
        if self.dicom is not None:
            self.dicom.check()
        ports = [("--port", self.port)] + ([("--dicom-port", self.dicom.port)] if self.dicom else [])
        if self.dicom is not None and self.dicom.port == self.port:
            raise UsageError(f"--dicom-port {self.port}: the same port as --port; give each its own")
        for option, port in ports:
            problem = _cannot_listen(self.host, port)
            if problem:
                raise UsageError(f"{option} {port}: cannot listen on {self.host}:{port} ({problem})")


def serve(options: ServeOptions, settings, weights, reporter: Reporter) -> None:
    """Run the service until Ctrl-C or SIGTERM."""
    import uvicorn

    from unetr_cli.serve.engine import Engine
    from unetr_cli.serve.http import create_app
    from unetr_cli.serve.jobs import JobStore

    options.check()
    store = JobStore(options.state)
    requeued, dropped = store.recover()
    if requeued or dropped:
        reporter.info(
            f"{options.state}: {requeued} job(s) queued again, {dropped} unfinished upload(s) removed"
        )
    stop = threading.Event()
    node = None
    if options.dicom is not None:
        from unetr_cli.serve.dicom_node import DicomNode

        node = DicomNode(store, options.dicom, reporter)
    engines = [
        Engine(store, settings, weights, device, options.batch, node.deliver if node else lambda job: None)
        for device in options.devices
    ]
    threads = [engine.start(stop) for engine in engines]
    threads.append(threading.Thread(target=_janitor, args=(store, options.keep_hours, stop), daemon=True))
    threads[-1].start()
    app = create_app(store, engines, options.token, options.max_upload_bytes, options.allow_non_ct)
    server = uvicorn.Server(uvicorn.Config(app, host=options.host, port=options.port, log_level="warning"))
    base = f"http://{options.host}:{options.port}"
    reporter.result(f"unetr serve: {base}/ (web page), {base}/docs (API), state in {options.state}")
    if node is not None:
        node.start(stop)
        dicom = options.dicom
        reporter.result(f"unetr serve: DICOM node {dicom.ae_title} on {dicom.host}:{dicom.port}")
    # uvicorn shuts down gracefully on Ctrl-C or SIGTERM, then raises the signal again: SIGTERM then ends
    # the process as a clean stop (exit 0) through this handler, after the engines have finished.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        server.run()
    finally:
        stop.set()
        if node is not None:
            node.stop()
        for thread in threads[:-1]:
            thread.join()  # each engine finishes the batch in hand
        store.close()
        reporter.result("unetr serve: stopped")


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the service could not listen on host:port (in use, not this machine's address), or None."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        return err.strerror or str(err)
    return None


def _terminated(signum, frame) -> None:
    raise SystemExit(0)


def _janitor(store, keep_hours: float, stop: threading.Event) -> None:
    while not stop.wait(JANITOR_S):
        store.expire(keep_hours * 3600.0)


def read_token(path: Path | None) -> str | None:
    """The bearer token in `path` (its first line), or None without one."""
    if path is None:
        return None
    try:
        lines = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(
            f"--token-file {path}: cannot read it ({getattr(err, 'strerror', None) or err})"
        ) from None
    token = lines[0].strip() if lines else ""
    if len(token) < 16:
        raise UsageError(f"--token-file {path}: the token must be at least 16 characters")
    return token


def serving_devices(name: str) -> list:
    """One engine per device: every visible GPU for `auto` (the CPU without one), else the device named."""
    import torch

    from unetr_cli.devices import resolve_device

    if name == "auto" and torch.cuda.device_count() > 1:
        return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
    return [resolve_device(name)]
