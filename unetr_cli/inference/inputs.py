"""Which scans a `unetr predict` call names and where their outputs go: inputs expanded (files, folders,
globs, DICOM series), unreadable formats refused, the output format chosen, and outputs planned and checked
before any work."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING

from unetr_cli.errors import OutputExistsError, UsageError
from unetr_cli.files import ensure_writable_folder, remove_stale_temporaries
from unetr_cli.inference.reports import output_stem
from unetr_cli.volumes import OUTPUT_FORMATS, file_kind, output_format, scan_suffix

if TYPE_CHECKING:
    from unetr_cli.inference.batch import PredictOptions


def expand_inputs(
    inputs: list[str], series_uid: str | None = None, allow_non_ct: bool = False
) -> tuple[list, list[str], dict]:
    """The scans named by files, folders and glob patterns, in order, without duplicates: NIfTI, NRRD and
    MetaImage files (a folder's own), and the CT series of DICOM files (in a folder, searched recursively, or
    a .zip; other modalities too with `allow_non_ct`). Returns the scans (paths and `dicom.DicomSeries`), one
    line per series skipped (another modality, localizers, secondary captures, reports...) or trimmed of
    duplicate files, and the DICOM files that could not be read, each with its message (failures of the
    batch).

    Raises:
        UsageError: nothing named, or every DICOM series found skipped (the lines say why).
    """
    from unetr_cli.dicom import DicomSeries, choose_series, find_series, is_dicom_file

    found: list = []
    unreadable: dict = {}

    def dicom_series(root: Path) -> list:
        series, broken = find_series(root)
        unreadable.update({err.path: str(err) for err in broken})
        return series

    for item in inputs:
        path = Path(item)
        if any(ch in item for ch in "*?[") and not path.exists():
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            if not matches:
                raise UsageError(f"{item}: the pattern matches no files")
        else:
            matches = [path]
        for match in matches:
            if match.is_dir():
                files = sorted(
                    p for p in match.iterdir() if p.is_file() and scan_suffix(p) and not _not_a_scan(p)
                )
                has_dicom = any(is_dicom_file(p) for p in match.rglob("*") if p.is_file())
                if not files and not has_dicom:
                    raise UsageError(
                        f"{match}: holds no scans (NIfTI, NRRD, MetaImage files or DICOM series)"
                    )
                found += files + (dicom_series(match) if has_dicom else [])
            elif match.is_file() and file_kind(match) == "zip":
                found += dicom_series(match)
            else:
                found.append(match)  # a missing or unreadable file is refused before the model loads
    found, merged = _merged_by_uid(found)
    series = [s for s in found if isinstance(s, DicomSeries)]
    chosen = choose_series(series, series_uid)
    skipped = [line for s in chosen if (line := s.skip_line(allow_non_ct))]
    if series_uid is not None and skipped:
        raise UsageError(skipped[0])
    notes = merged + [
        f"{s}: {s.duplicates} file(s) left out: the same image (SOPInstanceUID) as another file"
        for s in chosen
        if s.duplicates
    ]
    kept = {id(s) for s in chosen if s.skip_line(allow_non_ct) is None}
    scans, seen = [], set()
    for source in found:
        if isinstance(source, DicomSeries):
            key, keep = source.uid, id(source) in kept
        else:
            key, keep = source, series_uid is None
        if keep and key not in seen:
            seen.add(key)
            scans.append(source)
    if not scans and not unreadable:
        raise UsageError(
            "\n".join([*skipped, "nothing to segment: every DICOM series found was skipped"])
            if skipped
            else "no input scans: name scan files (NIfTI, NRRD, MetaImage), folders of them, DICOM series (a "
            "folder or .zip) or a glob pattern"
        )
    return scans, skipped + notes, unreadable


def _merged_by_uid(found: list) -> tuple[list, list[str]]:
    """The inputs with each DICOM series that several named folders hold (one SeriesInstanceUID) merged
    into one, and a line for each merge."""
    from unetr_cli.dicom import DicomSeries
    from unetr_cli.dicom.series import merge_series

    by_uid: dict[str, list] = {}
    for source in found:
        if isinstance(source, DicomSeries):
            by_uid.setdefault(source.uid, []).append(source)
    result, lines, done = [], [], set()
    for source in found:
        if not isinstance(source, DicomSeries) or len(by_uid[source.uid]) == 1:
            result.append(source)
        elif source.uid not in done:
            done.add(source.uid)
            copies = by_uid[source.uid]
            merged = merge_series(copies)
            result.append(merged)
            lines.append(
                f"{merged}: series {source.uid} is in {len(copies)} of the folders named "
                f"({', '.join(str(c.folder) for c in copies[1:4])}{', ...' if len(copies) > 4 else ''}): "
                f"read as one series of {len(merged.files)} images"
            )
    return result, lines


def preflight(scans: list, allow_non_ct: bool = False) -> dict:
    """The scans refused by what needs no model, each with its one line: every header read and checked
    (a format unetr reads, 3D, geometry, a DICOM series' slices: one slice, gaps, uneven spacing) and,
    unless `allow_non_ct`, what the header says against CT in Hounsfield units. Runs before the model loads;
    the batch segments the rest (the decoded voxels get their own look, `hounsfield.value_problem`)."""
    from unetr_cli.errors import InputError
    from unetr_cli.hounsfield import header_problem, refusal
    from unetr_cli.volumes import read_info

    refused = {}
    for source in scans:
        try:
            header, info = read_info(source)
        except InputError as err:
            refused[source] = str(err)
            continue
        if info.kind == "dicom-seg":
            refused[source] = f"{info.path}: is a DICOM-SEG (a label map), not a scan"
            continue
        problem = None if allow_non_ct else header_problem(info, header)
        if problem is not None:
            refused[source] = f"{info.path}: {refusal(problem)}"
    return refused


def _not_a_scan(path: Path) -> bool:
    """In a folder of scans: hidden files (temporary files among them) and unetr's own label maps (a
    `<name>_seg.*` beside its `<name>_seg.json` sidecar), so `-o` may be the input folder."""
    if path.name.startswith("."):
        return True
    stem = output_stem(path)
    return stem.name.endswith("_seg") and stem.with_suffix(".json").is_file()


def scan_name(source) -> str:
    """The base of a scan's output names: a file's name without its suffix, a DICOM series' folder."""
    return source.name if hasattr(source, "uid") else output_stem(Path(source)).name


def choose_format(output: Path, requested: str | None, sources: list) -> str:
    """The output format: --output-format, else what `-o`'s ending names, else NIfTI. DICOM-SEG references its
    source series, so it needs DICOM inputs only."""
    named = output_format(output) if not output.is_dir() else None
    if requested is not None and requested not in OUTPUT_FORMATS:
        raise UsageError(f"--output-format {requested}: expected one of {', '.join(OUTPUT_FORMATS)}")
    if requested and named and named != requested and len(sources) == 1:
        raise UsageError(f"-o {output}: the name asks for {named}, --output-format for {requested}")
    fmt = requested or (named if len(sources) == 1 else None) or "nifti"
    if fmt == "dicom-seg":
        others = [s for s in sources if not hasattr(s, "uid")]
        if others:
            raise UsageError(
                f"--output-format dicom-seg needs DICOM input; {others[0]} is not a DICOM series"
            )
    return fmt


def plan_outputs(sources: list, output: Path, fmt: str) -> list[Path]:
    """`-o` is the output file for a single input and a folder (`<name>_seg.<format suffix>` each) for
    several."""
    if len(sources) == 1 and output_format(output) and not output.is_dir():
        return [output]
    if output_format(output) and not output.is_dir():
        raise UsageError(f"-o {output}: with {len(sources)} inputs, -o must be a folder")
    names = [f"{scan_name(s)}_seg{OUTPUT_FORMATS[fmt]}" for s in sources]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise UsageError(
            f"inputs from different folders share the name(s) {sorted(duplicates)}; predict them separately"
        )
    return [output / name for name in names]


def check_outputs(inputs: list, outputs: list[Path], options: PredictOptions) -> None:
    """Before any work: no output is an input (`guard`: paths and inodes, links and detached data files
    included), label maps that exist need --overwrite or --skip-existing, and without --overwrite no file of
    an output's unit that unetr did not write is replaced (sidecars that outputs in several formats share are
    unetr's); every output folder can be created and written. Temporary files that dead unetr processes left
    in them are removed."""
    from unetr_cli.guard import input_files, refuse_inputs
    from unetr_cli.inference.batch import unit_files
    from unetr_cli.inference.reports import written_by_unetr

    refuse_inputs("-o", outputs, input_files(inputs))
    existing = [p for p in outputs if p.exists()]
    if existing and not (options.overwrite or options.skip_existing):
        raise OutputExistsError(
            existing[0],
            f"{len(existing)} output(s) exist; pass --overwrite to replace "
            "them or --skip-existing to keep them",
        )
    if not options.overwrite:  # files of the unit (its label map, or sidecars it shares) unetr did not write
        present = [p for p in outputs if any(f.exists() for f in unit_files(p, options))]
        foreign = [p for p in present if not written_by_unetr(p)]
        if foreign:
            sidecar = output_stem(foreign[0]).with_suffix(".json").name
            raise OutputExistsError(
                foreign[0],
                f"unetr did not write it (no {sidecar} of its own), so --skip-existing does not finish or "
                "keep it; pass --overwrite to replace it",
            )
    for folder in dict.fromkeys(p.parent for p in outputs):
        ensure_writable_folder(folder, "-o")
        remove_stale_temporaries(folder)
