"""The service as a DICOM node (pynetdicom): it answers C-ECHO, stores what a PACS or a modality sends
(C-STORE), takes a series as complete once nothing has arrived for it for `idle_s` seconds, queues a CT
series as a job (the same checks as an upload; other series are acknowledged and skipped with one line), and
sends the job's DICOM-SEG to a destination by C-STORE: the configured one, else the sender's address at
`send_port`.

Incoming files wait in the state folder (`incoming/<series>/`), so a series half received when the service
stops is finished when it starts again."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from unetr_cli.console import Reporter
from unetr_cli.errors import UsageError
from unetr_cli.serve.jobs import Job, JobStore
from unetr_cli.serve.uploads import Refused, accept

SEND_ATTEMPTS = 3


@dataclass(frozen=True)
class NodeOptions:
    """The node's AE title and port, the calling AE titles it accepts (any when empty), where results go, and
    how long a series may be silent before it counts as complete."""

    ae_title: str = "UNETR"
    host: str = "127.0.0.1"
    port: int = 11112
    allow: tuple[str, ...] = ()
    destination: str | None = None  # AE@host:port
    send_port: int = 11112  # the sender's port for results, when no destination is configured
    idle_s: float = 5.0
    allow_non_ct: bool = False

    def check(self) -> None:
        """AE titles of at most 16 characters, and a destination spelt AE@HOST:PORT."""
        for title in (self.ae_title, *self.allow):
            if not 0 < len(title.strip()) <= 16 or "\\" in title:
                raise UsageError(f"AE title {title!r}: 1 to 16 characters, no backslash")
        if self.destination is not None:
            title, at, place = self.destination.partition("@")
            host, colon, port = place.rpartition(":")
            if not (at and colon and host and port.isdigit() and 0 < int(port) < 65536 and title):
                raise UsageError(
                    f"--dicom-send {self.destination}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104"
                )
            NodeOptions(ae_title=title).check()


class DicomNode:
    """A C-STORE SCP feeding the job store, and the C-STORE SCU that delivers results."""

    def __init__(self, store: JobStore, options: NodeOptions, reporter: Reporter):
        self.store, self.options, self.reporter = store, options, reporter
        self.incoming = store.folder / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._server = None
        self._lock = threading.Lock()

    def start(self, stop: threading.Event) -> threading.Thread:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.options.ae_title)
        for context in AllStoragePresentationContexts:  # compressed series too (JPEG, JPEG 2000, RLE...)
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.options.allow:
            ae.require_calling_aet = list(self.options.allow)
        address = (self.options.host, self.options.port)
        self._server = ae.start_server(address, block=False, evt_handlers=[(evt.EVT_C_STORE, self._stored)])
        for job in self.store.undelivered():
            self.deliver(job)
        thread = threading.Thread(target=self._watch, args=(stop,), name="unetr-dicom-series", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _stored(self, event) -> int:
        """C-STORE: keep the instance in its series' folder (names from hashes, never from the data)."""
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        series = str(dataset.get("SeriesInstanceUID", "")) or f"no-uid-{event.assoc.requestor.address}"
        folder = self.incoming / hashlib.sha256(series.encode()).hexdigest()[:20]
        instance = str(dataset.get("SOPInstanceUID", "")) or f"{time.time_ns()}"
        with self._lock:
            folder.mkdir(exist_ok=True)
            sender = folder / "sender.json"
            if not sender.exists():
                requestor = event.assoc.requestor
                sender.write_text(json.dumps({"ae_title": requestor.ae_title, "address": requestor.address}))
            path = folder / f"{hashlib.sha256(instance.encode()).hexdigest()[:24]}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            folder.touch()  # its time: when the series last grew
        return 0x0000

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            for folder in sorted(self.incoming.iterdir()):
                if folder.is_dir() and time.time() - folder.stat().st_mtime >= self.options.idle_s:
                    with self._lock:
                        try:
                            self._complete(folder)
                        except Exception as err:  # one bad series never stops the node
                            self.reporter.warn(f"DICOM: a received series could not be queued: {err}")
                            shutil.rmtree(folder, ignore_errors=True)

    def _complete(self, folder: Path) -> None:
        """A series nothing has arrived for lately: a job when it is CT, else skipped with one line."""
        from unetr_cli.dicom import find_series

        record = folder / "sender.json"
        sender = json.loads(record.read_text()) if record.is_file() else {"ae_title": "?", "address": ""}
        record.unlink(missing_ok=True)
        try:
            series = find_series(folder)[0]
        except Exception as err:  # nothing readable in it
            self.reporter.warn(f"DICOM from {sender['ae_title']}: skipped a series: {err}")
            shutil.rmtree(folder, ignore_errors=True)
            return
        wanted = [s for s in series if s.skip_line(self.options.allow_non_ct) is None]
        for item in series:
            if item not in wanted:
                line = item.skip_line(self.options.allow_non_ct).replace(f" in {folder}", "")
                self.reporter.warn(f"DICOM from {sender['ae_title']}: {line}")
        if not wanted:
            shutil.rmtree(folder, ignore_errors=True)
            return
        name = f"DICOM series {wanted[0].number or ''} {wanted[0].description}".strip()
        reply_to = f"{sender['ae_title']}@{sender['address']}:{self.options.send_port}"
        destination = self.options.destination or (reply_to if sender["address"] else None)
        job = self.store.receive(name, origin="dicom", destination=destination)
        folder.rename(job.input / "dicom")
        try:
            accept(self.store, job, self.options.allow_non_ct)
            self.reporter.info(f"DICOM from {sender['ae_title']}: {name} queued as job {job.id}")
        except Refused as refused:
            self.reporter.warn(f"DICOM from {sender['ae_title']}: {refused.line}")

    def deliver(self, job: Job) -> None:
        """Send a done DICOM job's DICOM-SEG to its destination (in a thread of its own)."""
        if job.origin == "dicom" and job.destination:
            threading.Thread(target=self._send, args=(job,), name=f"unetr-send-{job.id}", daemon=True).start()

    def _send(self, job: Job) -> None:
        import pydicom
        from pynetdicom import AE
        from pynetdicom.sop_class import SegmentationStorage

        from unetr_cli.serve.results import result_file

        ae_title, _, place = job.destination.partition("@")
        host, _, port = place.rpartition(":")
        problem = "not sent"
        try:
            segmentation = pydicom.dcmread(result_file(job, "dicom-seg"))
        except Exception as err:
            self.store.set_delivery(job.id, f"not sent: the DICOM-SEG could not be made ({err})")
            return
        for attempt in range(SEND_ATTEMPTS):
            ae = AE(ae_title=self.options.ae_title)
            ae.add_requested_context(SegmentationStorage)
            association = ae.associate(host, int(port), ae_title=ae_title)
            if association.is_established:
                status = association.send_c_store(segmentation)
                association.release()
                if status and status.Status == 0x0000:
                    self.store.set_delivery(job.id, f"sent to {job.destination}")
                    self.reporter.info(f"job {job.id}: DICOM-SEG sent to {job.destination}")
                    return
                problem = f"not sent: {job.destination} answered status {getattr(status, 'Status', 'none')}"
            else:
                problem = f"not sent: no association with {job.destination}"
            time.sleep(2.0 * (attempt + 1))
        self.store.set_delivery(job.id, problem)
        self.reporter.warn(f"job {job.id}: {problem}")
