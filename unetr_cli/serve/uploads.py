"""What a job segments, and how an upload becomes a job: only once it has passed the checks `unetr predict`
makes before any model. The upload is stored under a name unetr chooses from its content (the client's name is
shown, never used as a path); a .zip of DICOM files is unpacked within the archive limits and must hold one CT
series; then the header checks (`inference.inputs.preflight`). A refusal is a `Refused`: the HTTP status and
`predict`'s one line, naming the upload as the client named it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from unetr_cli.errors import InputError
from unetr_cli.files import write_text
from unetr_cli.serve.jobs import Job, JobStore

UPLOAD = "upload"  # what the bytes are stored as until their content names them
SERIES = "series.json"  # the DICOM series a job segments, chosen when it was accepted
SUFFIXES = {"nifti": ".nii", "nrrd": ".nrrd", "metaimage": ".mha"}


class Refused(Exception):
    """An upload the service does not accept: an HTTP status and the one line that says why."""

    def __init__(self, status: int, line: str):
        self.status, self.line = status, line
        super().__init__(line)


def accept(store: JobStore, job: Job, allow_non_ct: bool = False) -> Job:
    """Check a job's received upload (`job.input / UPLOAD`) and queue it; on a refusal the job is discarded.

    Raises:
        Refused: not a scan unetr reads, more or less than one CT series, or a refusal `predict` would make
            before loading the model.
    """
    try:
        source = _stored(job, allow_non_ct)
        _preflight(source, allow_non_ct)
    except Refused as refused:
        store.discard(job.id)
        raise Refused(refused.status, client_line(refused.line, job)) from None
    except InputError as err:
        store.discard(job.id)
        raise Refused(422, client_line(str(err), job)) from None
    store.queue(job.id)
    return store.get(job.id)


def source_of(job: Job):
    """What a job segments: its scan file, or the DICOM series chosen when it was accepted."""
    from unetr_cli.dicom import DicomSeries

    chosen = job.input / SERIES
    if chosen.is_file():
        values = json.loads(chosen.read_text())
        values["files"] = [str(job.input / name) for name in values["files"]]
        values["folder"] = str(job.input / values["folder"])
        return DicomSeries.from_dict(values)
    return next(p for p in job.input.iterdir() if p.name.startswith("scan"))


def _stored(job: Job, allow_non_ct: bool):
    """The upload under the name its content gives it (a .zip unpacked), and the job's source."""
    from unetr_cli.archives import unpacked
    from unetr_cli.datafiles import detached_data_files
    from unetr_cli.volumes import file_kind

    raw = job.input / UPLOAD
    if not raw.exists():  # a series the DICOM node collected, already in its folder
        return _choose_series(job, allow_non_ct)
    kind = file_kind(raw)
    if kind == "zip":
        unpacked(raw, into=job.input / "dicom")
        raw.unlink()
        return _choose_series(job, allow_non_ct)
    if kind in SUFFIXES:
        gzip = raw.read_bytes()[:2] == b"\x1f\x8b" if kind == "nifti" else False
        stored = raw.rename(job.input / f"scan{SUFFIXES[kind]}{'.gz' if gzip else ''}")
        if detached_data_files(stored, strict=False):
            raise Refused(422, f"{raw}: a header whose voxels lie in other files: upload a .nrrd or .mha")
        return source_of(job)
    if kind == "dicom":
        raise Refused(422, f"{raw}: is one DICOM slice: upload a .zip of its series")
    if kind == "dicom-seg":
        raise Refused(422, f"{raw}: is a DICOM-SEG (a label map), not a scan")
    raise Refused(415, f"{raw}: not a scan file: expected NIfTI, NRRD, MetaImage or a .zip of a DICOM series")


def _choose_series(job: Job, allow_non_ct: bool):
    """The one series of the job's DICOM files to segment, remembered for the engine."""
    from unetr_cli.dicom import find_series

    dicom = job.input / "dicom"
    series = find_series(dicom)[0]
    wanted = [s for s in series if s.skip_line(allow_non_ct) is None]
    if not wanted:
        reasons = [s.skip_line(allow_non_ct) for s in series]
        raise Refused(422, f"{dicom}: {reasons[0] if reasons else 'holds no DICOM image series'}")
    if len(wanted) > 1:
        raise Refused(422, f"{dicom}: holds {len(wanted)} series to segment; send one series per job")
    values = wanted[0].to_dict()
    values["files"] = [str(Path(name).relative_to(job.input)) for name in values["files"]]
    values["folder"] = str(Path(values["folder"]).relative_to(job.input))
    write_text(job.input / SERIES, json.dumps(values))
    return source_of(job)


def _preflight(source, allow_non_ct: bool) -> None:
    from unetr_cli.inference.inputs import preflight

    refused = preflight([source], allow_non_ct)
    if refused:
        raise Refused(422, next(iter(refused.values())))


def client_line(line: str, job: Job) -> str:
    """A line about a job's files, naming its input as the client did, and no folder of the service's."""
    line = re.sub(re.escape(str(job.input)) + r"[^\s:]*", lambda _: job.name, line)
    return line.replace(str(job.folder), "the job's output")
