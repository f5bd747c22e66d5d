"""`unetr report`: the plausibility flags of an existing label map, from unetr or any other tool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unetr_cli.commands import options as opt
from unetr_cli.console import Reporter, error_line


def report(
    label_map: Annotated[
        Path,
        typer.Argument(
            help="A label map in BTCV ids (NIfTI, NRRD, MetaImage or DICOM-SEG), from unetr or any tool."
        ),
    ],
    scan: Annotated[
        Path | None,
        typer.Option(
            help="The CT it labels (a file or a DICOM series), on the same grid (a DICOM-SEG is placed on "
            "it): adds mean HU, the body's midline and the front/back check.",
            rich_help_panel="Data",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Folder for <name>_stats.json and .csv (default: beside the label map).",
            rich_help_panel="Run",
            file_okay=False,
        ),
    ] = None,
    fail_on_flags: Annotated[
        bool, typer.Option(help="Exit 1 when the label map is flagged.", rich_help_panel="Checks")
    ] = False,
    overwrite: opt.Overwrite = False,
    quiet: opt.Quiet = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Judge a label map: per organ, volume, mean HU and the flags to double-check (lateral, cut, volume,
    fragments, hu, missing), and whether the scan's orientation looks right.

    Writes <name>_stats.json and .csv (as `unetr predict --report` does) and prints one line naming the
    flagged organs. What cannot be judged (no scan given, unknown label ids, an empty map) is said in a note.

    Examples:
      unetr report segs/case1_seg.nii.gz --scan scans/case1.nii.gz
      unetr report totalseg_btcv.nii.gz --scan ct.nii.gz -o reports/ --fail-on-flags
      unetr report segs/series_seg.dcm --scan dicom/series/
    """
    from unetr_cli.files import ensure_writable_folder
    from unetr_cli.guard import check_output, input_files
    from unetr_cli.inference.plausibility import judge_label_map, report_paths, write_report
    from unetr_cli.inference.reports import output_stem
    from unetr_cli.labels import BTCV_LABELS
    from unetr_cli.volumes import scan_source

    stem = output_stem(label_map)
    if output is not None:
        stem = output / stem.name
    inputs = input_files([scan_source(p) for p in (label_map, scan) if p is not None])
    for path in report_paths(stem):
        check_output("-o", path, inputs, overwrite)
    ensure_writable_folder(stem.parent, "-o")
    reporter = Reporter(opt.output_mode(quiet, json_output))
    judged = judge_label_map(label_map, scan, len(BTCV_LABELS))
    for note in judged.notes:
        reporter.warn(f"{label_map}: {note}")
    for problem in judged.orientation:
        reporter.warn(f"{label_map}: {problem}")
    written = write_report(stem, judged, str(scan) if scan else "")
    reporter.result(judged.summary(str(label_map)))
    reporter.event("report", label_map=str(label_map), files=[str(p) for p in written], **judged.to_dict())
    if fail_on_flags and judged.has_flags:
        error_line(f"{label_map}: flagged (--fail-on-flags)")
        raise typer.Exit(1)
