"""A .zip of DICOM files is unpacked within limits (size, member count, compression ratio, free space), names
what it refuses and the setting that raises it, and dead processes' folders are removed (archives.py)."""

from __future__ import annotations

import subprocess
import tempfile
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest

from tests.conftest import invoke
from unetr_cli import archives
from unetr_cli.dicom import find_series
from unetr_cli.errors import InputError
from unetr_cli.phantoms import make_phantom
from unetr_cli.phantoms.dicom_series import write_ct_series


@pytest.fixture
def series_zip(tmp_path) -> Path:
    phantom = make_phantom(61, (32, 32, 5))
    files = write_ct_series(phantom.image, phantom.affine, tmp_path / "ct")
    archive = tmp_path / "ct.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in files:
            bundle.write(path, f"DICOM/{path.name}")
    return archive


def test_a_zip_bomb_is_refused_before_a_byte_is_written(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("DICOM/huge.dcm", bytes(64 << 20))  # 64 MiB of zeros packs to about 64 KiB
    before = set(Path(tempfile.gettempdir()).glob(f"{archives.PREFIX}*"))
    result = invoke("predict", bomb, "-o", tmp_path / "out", "--checkpoint", tmp_path / "none.pt")
    assert result.exit_code == 1, result.output
    line = " ".join(result.stderr.split())
    assert "member DICOM/huge.dcm unpacks to" in line and "data.archive_max_ratio = 200" in line
    assert "UNETR_DATA__ARCHIVE_MAX_RATIO" in line and "Traceback" not in result.output
    assert set(Path(tempfile.gettempdir()).glob(f"{archives.PREFIX}*")) == before  # nothing unpacked
    monkeypatch.setenv("UNETR_DATA__ARCHIVE_MAX_RATIO", "5000")  # trusted: the limit raised
    with pytest.raises(InputError, match="holds no DICOM images"):
        find_series(bomb)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("UNETR_DATA__ARCHIVE_MAX_GIB", "1e-6", "more than data.archive_max_gib = 1e-06"),
        ("UNETR_DATA__ARCHIVE_MAX_MEMBER_GIB", "1e-6", "more than data.archive_max_member_gib = 1e-06"),
        ("UNETR_DATA__ARCHIVE_MAX_MEMBERS", "3", "holds 5 files, more than data.archive_max_members = 3"),
    ],
)
def test_each_limit_names_itself_and_its_setting(series_zip, monkeypatch, variable, value, expected):
    assert len(find_series(series_zip)[0][0].files) == 5  # within the default limits
    monkeypatch.setenv(variable, value)
    with pytest.raises(InputError) as refused:
        find_series(series_zip)
    assert expected in str(refused.value) and variable in str(refused.value)


def test_too_little_free_space_names_the_temporary_folder_not_the_zip(series_zip, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1 << 20))
    with pytest.raises(InputError) as refused:
        find_series(series_zip)
    assert "GiB free; point TMPDIR at a larger folder" in str(refused.value)
    assert "unreadable" not in str(refused.value)


def test_folders_of_dead_processes_are_removed(series_zip):
    dead_pid = subprocess.Popen(["true"])  # once it has ended, its pid names no process
    dead_pid.wait()
    scratch = Path(tempfile.gettempdir())
    dead = scratch / f"{archives.PREFIX}{dead_pid.pid}-leftover"
    alive = scratch / f"{archives.PREFIX}1-init"  # pid 1 always runs
    for folder in (dead, alive):
        (folder / "DICOM").mkdir(parents=True, exist_ok=True)
    try:
        find_series(series_zip)
        assert not dead.exists() and alive.exists()
    finally:
        for folder in (dead, alive):
            subprocess.run(["rm", "-rf", str(folder)], check=False)
