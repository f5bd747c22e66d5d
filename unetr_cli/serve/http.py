"""The HTTP API (FastAPI) and the web page: submit a scan, follow its job, fetch its result; health and
Prometheus metrics; the OpenAPI description at /docs. A refused upload is a 4xx with the line `unetr predict`
would print; with a token, every request but the page itself and /health must carry it."""

from __future__ import annotations

import hmac
import re
import shutil
import time
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse

from unetr_cli import __version__
from unetr_cli.errors import known_failure
from unetr_cli.serve.jobs import Job, JobStore
from unetr_cli.serve.uploads import UPLOAD, Refused, accept

JOB_ID = re.compile(r"^[0-9a-f]{16}$")
DISK_RESERVE = 256 << 20  # what the service keeps free on its disk


def create_app(store: JobStore, engines: list, token: str | None, max_upload_bytes: int, allow_non_ct: bool):
    """The API over `store`, served while `engines` work on its jobs."""
    app = FastAPI(
        title="unetr",
        version=__version__,
        description="UNETR abdominal CT segmentation (13 BTCV organs) as a service: submit a scan, "
        "follow its job, fetch the label map as NIfTI, seg.nrrd or DICOM-SEG.",
    )
    started = time.time()

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "a bearer token is required (Authorization: Bearer TOKEN)")

    guarded = [Depends(authorised)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("unetr_cli.serve").joinpath("static/index.html").read_text()

    @app.get("/health")
    def health() -> dict:
        """Whether the model is ready on every device, and the jobs by state."""
        states = [engine.state for engine in engines]
        status = "ok" if all(s == "ready" for s in states) else "failed" if "failed" in states else "loading"
        return {
            "status": status,
            "devices": {str(e.device): e.state if e.error is None else e.error for e in engines},
            "jobs": store.counts(),
            "version": __version__,
        }

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=guarded)
    def metrics() -> str:
        """Prometheus text format: jobs by state, model readiness, uptime."""
        lines = ["# HELP unetr_jobs Jobs in the state folder, by state.", "# TYPE unetr_jobs gauge"]
        lines += [f'unetr_jobs{{state="{state}"}} {count}' for state, count in store.counts().items()]
        lines += [
            "# HELP unetr_model_ready Whether the model is ready on the device.",
            "# TYPE unetr_model_ready gauge",
        ]
        lines += [f'unetr_model_ready{{device="{e.device}"}} {int(e.state == "ready")}' for e in engines]
        lines += [
            "# HELP unetr_uptime_seconds Seconds since the service started.",
            "# TYPE unetr_uptime_seconds gauge",
        ]
        lines.append(f"unetr_uptime_seconds {time.time() - started:.1f}")
        return "\n".join(lines) + "\n"

    @app.post("/jobs", status_code=202, dependencies=guarded)
    async def submit(request: Request, name: str = "scan") -> dict:
        """Submit a scan as the request body (NIfTI, NRRD, MetaImage, or a .zip of one DICOM series); `name`
        is how the job shows it. Returns the job, queued."""
        _check_room(request, name, max_upload_bytes, store.folder)
        job = store.receive(name)
        received = 0
        try:
            with open(job.input / UPLOAD, "wb") as out:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > max_upload_bytes:
                        raise Refused(
                            413, f"{name}: larger than the service accepts ({max_upload_bytes >> 20} MiB)"
                        )
                    out.write(chunk)
            job = await run_in_threadpool(accept, store, job, allow_non_ct)
        except Refused as refused:
            store.discard(job.id)
            raise HTTPException(refused.status, refused.line) from None
        except OSError as err:  # the service's disk, not the client's upload
            store.discard(job.id)
            raise HTTPException(507, f"{name}: could not be stored: {known_failure(err, name)}") from None
        except BaseException:
            store.discard(job.id)
            raise
        return _described(job)

    @app.get("/jobs", dependencies=guarded)
    def jobs(limit: int = Query(50, ge=1, le=1000)) -> list[dict]:
        """The newest jobs, newest first: state, stage, name, origin, error, DICOM delivery."""
        return [job.to_dict() | {"url": f"/jobs/{job.id}"} for job in store.recent(limit)]

    @app.get("/jobs/{job_id}", dependencies=guarded)
    def status(job_id: str) -> dict:
        """The job: its state and stage, the error of a failed one; for a done one its organs (volume, mean
        HU, flags), the orientation problems and notes, and where to fetch the result."""
        return _described(_job(job_id))

    @app.get("/jobs/{job_id}/result", dependencies=guarded)
    async def result(job_id: str, format: str = "nifti") -> FileResponse:  # noqa: A002 - the API's word
        """The label map as `format`: nifti, seg-nrrd, or dicom-seg (for a DICOM job)."""
        from unetr_cli.serve.results import FORMATS, NoSuchResult, result_file

        job = _done(job_id)
        if format not in FORMATS:
            raise HTTPException(422, f"format {format}: expected one of {', '.join(FORMATS)}")
        try:
            path = await run_in_threadpool(result_file, job, format)
        except NoSuchResult as missing:
            raise HTTPException(404, str(missing)) from None
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(job.name).name.split(".")[0])[:64] or "scan"
        return FileResponse(path, filename=f"{stem}_{path.name}")  # a client's name, made harmless

    @app.get("/jobs/{job_id}/view", dependencies=guarded)
    async def view_meta(job_id: str) -> JSONResponse:
        """What the web page draws: shape, spacing, organ names and colours."""
        from unetr_cli.serve.results import view

        meta, _, _ = await run_in_threadpool(view, _done(job_id))
        return JSONResponse(meta)

    @app.get("/jobs/{job_id}/view/{volume}", dependencies=guarded)
    async def view_volume(job_id: str, volume: str) -> FileResponse:
        """The windowed scan (`image`) or the labels (`labels`): bytes, z then y then x, in RAS."""
        from unetr_cli.serve.results import view

        if volume not in ("image", "labels"):
            raise HTTPException(404, f"{volume}: expected image or labels")
        _, image, labels = await run_in_threadpool(view, _done(job_id))
        return FileResponse(image if volume == "image" else labels, media_type="application/octet-stream")

    def _job(job_id: str) -> Job:
        job = store.get(job_id) if JOB_ID.match(job_id) else None
        if job is None or job.state == "receiving":
            raise HTTPException(404, f"no job {job_id}")
        return job

    def _done(job_id: str) -> Job:
        job = _job(job_id)
        if job.state != "done":
            raise HTTPException(409, f"job {job_id} is {job.state}" + (f": {job.error}" if job.error else ""))
        return job

    return app


def _check_room(request: Request, name: str, max_upload_bytes: int, folder: Path) -> None:
    """Refuse an announced upload that is too large, or that the service's disk has no room for, before
    reading it."""
    try:
        length = int(request.headers.get("content-length", "0"))
    except ValueError:
        raise HTTPException(400, "Content-Length: not a number") from None
    if length > max_upload_bytes:
        raise HTTPException(413, f"{name}: larger than the service accepts ({max_upload_bytes >> 20} MiB)")
    free = shutil.disk_usage(folder).free
    if length * 3 + DISK_RESERVE > free:  # the upload, its unpacked files and its outputs
        raise HTTPException(
            507, f"{name}: the service's disk is full ({free >> 20} MiB free); try again later"
        )


def _described(job: Job) -> dict:
    described = job.to_dict() | {"url": f"/jobs/{job.id}"}
    if job.state == "done":
        from unetr_cli.serve.results import formats

        report = job.report() or {}
        described |= {
            "flagged": report.get("flagged", []),
            "orientation": report.get("orientation", []),
            "notes": report.get("notes", []),
            "organs": report.get("organs", []),
            "results": {fmt: f"/jobs/{job.id}/result?format={fmt}" for fmt in formats(job)},
        }
    return described
