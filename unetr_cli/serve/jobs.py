"""The service's jobs, kept in its state folder so that none is lost: an SQLite table (the queue) and a folder
per job (its input and its outputs).

A job is `receiving` while its upload arrives (it is no job yet: the service has not accepted it), then
`queued`, `running`, and `done` or `failed`. A service that was killed finds, when it starts again, its
running jobs queued again and its unfinished uploads gone; every accepted job is finished. Finished jobs are
removed after the time the service keeps results.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

STATES = ("receiving", "queued", "running", "done", "failed")
_COLUMNS = "id, state, stage, created, updated, name, origin, error, destination, delivery"


@dataclass(frozen=True)
class Job:
    """One job as the table holds it, and its folder."""

    id: str
    state: str
    stage: str
    created: float
    updated: float
    name: str  # what the client called its upload (shown, never used as a path)
    origin: str  # http or dicom
    error: str | None
    destination: str | None  # a DICOM job's destination: AE@host:port
    delivery: str | None  # how sending its DICOM-SEG went
    folder: Path

    @property
    def input(self) -> Path:
        return self.folder / "input"

    @property
    def labels(self) -> Path:
        """The label map the job makes (NIfTI); other formats are made from it on request."""
        return self.folder / "seg.nii.gz"

    def report(self) -> dict | None:
        """The plausibility report of a done job (`unetr predict --report`'s JSON)."""
        path = self.folder / "seg_stats.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "stage": self.stage,
            "created": self.created,
            "updated": self.updated,
            "name": self.name,
            "origin": self.origin,
            "error": self.error,
            "delivery": self.delivery,
        }


class JobStore:
    """The jobs of one state folder. Safe to use from several threads (one connection, one lock)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        (self.folder / "jobs").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.arrived = threading.Event()  # set when a job is queued: idle engines wake at once
        self._db = sqlite3.connect(self.folder / "jobs.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an accepted job survives a power cut
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, state TEXT, stage TEXT, created REAL, "
            "updated REAL, name TEXT, origin TEXT, error TEXT, destination TEXT, delivery TEXT)"
        )

    def recover(self) -> tuple[int, int]:
        """After a start: running jobs queued again, unfinished uploads removed. Returns both counts."""
        with self._lock:
            requeued = self._db.execute(
                "UPDATE jobs SET state='queued', stage='queued again after a restart' WHERE state='running'"
            ).rowcount
            gone = [row[0] for row in self._db.execute("SELECT id FROM jobs WHERE state='receiving'")]
            self._db.execute("DELETE FROM jobs WHERE state='receiving'")
        for job_id in gone:
            shutil.rmtree(self.folder / "jobs" / job_id, ignore_errors=True)
        return requeued, len(gone)

    def receive(self, name: str, origin: str = "http", destination: str | None = None) -> Job:
        """A new job's row and folder, `receiving` until `queue` accepts it."""
        job_id, now = uuid.uuid4().hex[:16], time.time()
        (self.folder / "jobs" / job_id / "input").mkdir(parents=True)
        with self._lock:
            self._db.execute(
                f"INSERT INTO jobs ({_COLUMNS}) "
                "VALUES (?, 'receiving', 'receiving', ?, ?, ?, ?, NULL, ?, NULL)",
                (job_id, now, now, name[:200], origin, destination),
            )
        return self.get(job_id)

    def queue(self, job_id: str) -> None:
        self._set(job_id, state="queued", stage="queued")
        self.arrived.set()

    def discard(self, job_id: str) -> None:
        """A job that was never accepted (a refused upload): its row and folder go."""
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
        shutil.rmtree(self.folder / "jobs" / job_id, ignore_errors=True)

    def claim(self, limit: int) -> list[Job]:
        """Up to `limit` queued jobs, oldest first, now `running` (no other engine gets them)."""
        now = time.time()
        with self._lock:
            rows = self._db.execute(
                f"UPDATE jobs SET state='running', stage='segmenting', updated=? WHERE id IN (SELECT id FROM "
                f"jobs WHERE state='queued' ORDER BY created LIMIT ?) RETURNING {_COLUMNS}",
                (now, limit),
            ).fetchall()
        return sorted((self._job(row) for row in rows), key=lambda job: job.created)

    def finish(self, job_id: str, error: str | None = None) -> None:
        """Done, or failed with the one line that says why."""
        state = "failed" if error else "done"
        self._set(job_id, state=state, stage=state, error=error)

    def set_stage(self, job_id: str, stage: str) -> None:
        self._set(job_id, stage=stage)

    def set_delivery(self, job_id: str, delivery: str) -> None:
        self._set(job_id, delivery=delivery)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def recent(self, limit: int) -> list[Job]:
        """The newest `limit` accepted jobs, newest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state != 'receiving' ORDER BY created DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [self._job(row) for row in rows]

    def undelivered(self) -> list[Job]:
        """Done DICOM jobs whose DICOM-SEG was never sent (the service stopped first)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state='done' AND origin='dicom' AND delivery IS NULL"
            ).fetchall()
        return [self._job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in STATES} | dict(rows)

    def expire(self, keep_seconds: float) -> list[str]:
        """Remove finished jobs older than `keep_seconds` (their rows and folders)."""
        cutoff = time.time() - keep_seconds
        with self._lock:
            old = [
                row[0]
                for row in self._db.execute(
                    "SELECT id FROM jobs WHERE state IN ('done', 'failed') AND updated < ?", (cutoff,)
                )
            ]
            self._db.execute("DELETE FROM jobs WHERE state IN ('done', 'failed') AND updated < ?", (cutoff,))
        for job_id in old:
            shutil.rmtree(self.folder / "jobs" / job_id, ignore_errors=True)
        return old

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _set(self, job_id: str, **values) -> None:
        assignments = ", ".join(f"{key}=?" for key in values)
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET {assignments}, updated=? WHERE id=?",
                (*values.values(), time.time(), job_id),
            )

    def _job(self, row) -> Job:
        return Job(*row, folder=self.folder / "jobs" / row[0])
