"""Atomic output: complete files or none, never a clobbered one, no temporary file left for long."""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple

import pytest

from unetr_cli.errors import OutputExistsError
from unetr_cli.files import TEMP_PREFIX, atomic_output, remove_stale_temporaries, temporary_path


def test_a_new_file_is_never_written_over_one_that_appeared_meanwhile(tmp_path):
    target = tmp_path / "seg.nii.gz"
    with (
        pytest.raises(OutputExistsError, match="written meanwhile by another process"),
        atomic_output(target, overwrite=False) as tmp,
    ):
        tmp.write_bytes(b"mine")
        target.write_bytes(b"the other process's")  # it won the race
    assert target.read_bytes() == b"the other process's"
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "checkpoint_latest.pt"
    target.write_bytes(b"old")
    with pytest.raises(ValueError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("the writer failed")
    assert target.read_bytes() == b"old" and not list(tmp_path.glob(f"{TEMP_PREFIX}*"))


def test_a_writer_stopped_by_a_full_disk_is_named(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1024))
    with pytest.raises(OSError) as caught, atomic_output(tmp_path / "checkpoint_latest.pt"):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 45")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith("checkpoint_latest.pt")


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / f"{TEMP_PREFIX}999999999-scan_seg.nii.gz"
    dead.write_bytes(b"left by a kill")
    live = temporary_path(tmp_path / "other.nii.gz")
    live.write_bytes(b"being written")
    assert str(os.getpid()) in live.name
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert live.exists() and not dead.exists()


def test_a_failed_write_is_named_after_its_destination_and_leaves_nothing(tmp_path):
    target = tmp_path / "seg.json"
    with pytest.raises(OSError) as raised, atomic_output(target) as tmp:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk does: no file name
    assert raised.value.filename == str(target) and raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_second_name_takes_no_space_and_outlives_a_rewrite_of_the_first(tmp_path):
    from unetr_cli.files import link_or_copy, write_bytes

    first = write_bytes(tmp_path / "checkpoint_latest.pt", b"epoch 10")
    second = link_or_copy(first, tmp_path / "checkpoint_final.pt")
    assert os.stat(first).st_ino == os.stat(second).st_ino  # one file on disk, two names
    write_bytes(first, b"epoch 20")  # every write replaces the name with a new file
    assert second.read_bytes() == b"epoch 10" and first.read_bytes() == b"epoch 20"
