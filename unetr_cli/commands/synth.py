"""`unetr synth`: synthetic abdominal CT phantoms in the BTCV layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from unetr_cli.commands import options as opt
from unetr_cli.console import Reporter, stdout
from unetr_cli.errors import UsageError


def synth(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder for imagesTr/, labelsTr/ and dataset_0.json.", file_okay=False)
    ],
    cases: Annotated[int, typer.Option(min=1, help="Number of phantoms.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 0,
    shape: Annotated[
        tuple[int, int, int] | None,
        typer.Option(
            help="Voxels per axis, e.g. --shape 128 128 64 (default 512 x 512 x slices, like BTCV)."
        ),
    ] = None,
    folds: Annotated[
        int | None, typer.Option(min=2, help="Tag training entries with K cross-validation folds.")
    ] = None,
    validation_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of cases in the 'validation' list.")
    ] = 0.2,
    workers: Annotated[int, typer.Option(min=1, help="Processes generating phantoms side by side.")] = 1,
    image_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="Images as nifti, dicom (a series folder per case), nrrd or mha; labels are NIfTI.",
        ),
    ] = "nifti",
    overwrite: opt.Overwrite = False,
    quiet: opt.Quiet = False,
) -> None:
    """Generate synthetic abdominal CT phantoms with the 13 BTCV organs, in the BTCV folder layout.

    Images are int16 HU volumes (BTCV-like spacings, LPS or RAS affines), labels use BTCV ids 1..13.

    Examples:
      unetr synth data/phantoms --cases 4 --seed 0
      unetr synth data/small --cases 12 --shape 128 128 64 --folds 5
      unetr synth data/full --cases 30 --workers 8
      unetr synth data/dicom --cases 4 --format dicom
    """
    from unetr_cli.errors import OutputExistsError
    from unetr_cli.phantoms import write_dataset
    from unetr_cli.phantoms.generator import IMAGE_FORMATS, dataset_files

    if image_format not in IMAGE_FORMATS:
        raise UsageError(f"--format {image_format}: expected one of {', '.join(IMAGE_FORMATS)}")
    if shape is not None and min(shape) < 1:
        raise UsageError(f"--shape {' '.join(map(str, shape))}: every axis needs at least one voxel")
    if shape is not None:
        _check_memory(shape, workers)
    existing = [p for p in dataset_files(out_dir, cases, image_format) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            existing[0], f"{len(existing)} of the dataset's files exist; pass --overwrite to regenerate them"
        )
    reporter = Reporter("quiet" if quiet else "rich")
    with reporter.progress() as bar:
        task = bar.add_task("phantoms", total=cases, status="") if bar else None
        path = write_dataset(
            out_dir,
            cases,
            seed=seed,
            shape=shape,
            validation_fraction=validation_fraction,
            folds=folds,
            workers=workers,
            image_format=image_format,
            progress=(lambda i: bar.update(task, completed=i)) if bar else None,
        )
    _print_dataset_table(path, reporter)


def _print_dataset_table(datalist: Path, reporter: Reporter) -> None:
    """A table of what was written, read back from the files' headers."""
    from rich.table import Table

    from unetr_cli.volumes import read_info, scan_source

    listing = json.loads(datalist.read_text())
    table = Table(title=str(datalist), title_justify="left")
    for column in ("split", "image", "voxels", "spacing (mm)", "axes"):
        table.add_column(column, no_wrap=True)
    for split in ("training", "validation"):
        for entry in listing[split]:
            _, info = read_info(scan_source(datalist.parent / entry["image"]))
            table.add_row(
                split,
                Path(entry["image"]).name,
                "x".join(map(str, info.shape)),
                "x".join(f"{s:.2f}" for s in info.spacing),
                info.orientation,
            )
    stdout.print(table)
    reporter.info(
        f"wrote {len(listing['training'])} training and {len(listing['validation'])} validation cases"
    )


PHANTOM_BYTES_PER_VOXEL = 48  # peak while one phantom is made (tracemalloc: 47 at 256x256x64, less if larger)


def _check_memory(shape: tuple[int, int, int], workers: int) -> None:
    """Refuse a --shape whose phantoms cannot be made in the free memory, before any work."""
    import math

    from unetr_cli.volumes import available_memory_bytes

    voxels = math.prod(shape)
    need, free = voxels * PHANTOM_BYTES_PER_VOXEL * workers, available_memory_bytes()
    if need > free:
        raise UsageError(
            f"--shape {' '.join(map(str, shape))}: a phantom of {voxels:.3g} voxels needs about "
            f"{need / 2**30:,.0f} GiB of memory ({workers} at a time), more than the {free / 2**30:.1f} GiB "
            "free; choose a smaller --shape"
        )
