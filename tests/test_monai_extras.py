"""The unetr programs load MONAI without the optional extras unetr does not use; everything else imports as
usual. An installed extra is simulated by a stand-in package that leaves a mark (a file of its name) when
imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

STAND_IN = "import os, pathlib\n(pathlib.Path(os.environ['EXTRA_MARKS']) / __name__).touch()\n"
# Optional MONAI extras (asked for through MONAI's optional_import), then the two imported plainly (by MONAI's
# jupyter_utils and by nibabel); pydicom's stand-in has the one name nibabel takes from it.
EXTRAS = {"skimage": "", "pandas": "", "matplotlib": "", "pydicom": "class Dataset:\n    pass\n"}


@pytest.fixture
def extras_installed(tmp_path) -> tuple[dict, Path]:
    """Stand-ins for `EXTRAS` on the path of the processes started, and the folder of their marks."""
    site, marks = tmp_path / "site", tmp_path / "imported"
    marks.mkdir()
    for name, body in EXTRAS.items():
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(STAND_IN + body)
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "EXTRA_MARKS": str(marks)}, marks


def _imported(marks: Path) -> set[str]:
    return {p.name for p in marks.iterdir()}


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_monai_as_a_library_imports_the_extras_it_finds(extras_installed):
    env, marks = extras_installed
    done = _python("import unetr_cli.inference.scan, monai", env)
    assert done.returncode == 0, done.stderr
    assert _imported(marks) == set(EXTRAS)  # what the programs avoid: MONAI imports every extra installed


def test_monai_skips_them_once_asked_and_later_imports_are_untouched(extras_installed):
    """Also when nibabel, which MONAI loads, is imported first in another thread (predict decodes the first
    scan beside building the model)."""
    env, marks = extras_installed
    code = (
        "import sys, pathlib, importlib.machinery\n"
        "from unetr_cli.monai_extras import skip_unused_extras\n"
        "skip_unused_extras()\n"
        "import threading\n"
        "reader = threading.Thread(target=__import__, args=('nibabel',))  # as predict's reader thread does\n"
        "reader.start(); reader.join()\n"
        "import monai\n"
        "from monai.networks.nets import UNETR\n"
        "assert not any(pathlib.Path(sys.argv[-1]).iterdir()), 'MONAI imported an extra'\n"
        "assert isinstance(monai.__loader__, importlib.machinery.SourceFileLoader)\n"
        "import skimage, pydicom\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, env["EXTRA_MARKS"]], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert _imported(marks) == {"skimage", "pydicom"}  # later imports are not refused


@pytest.mark.slow
def test_unetr_predict_runs_without_loading_the_extras(extras_installed, trained_run, tiny_dataset, tmp_path):
    env, marks = extras_installed
    scan = sorted((tiny_dataset / "imagesTr").iterdir())[0]
    done = subprocess.run(
        [sys.executable, "-m", "unetr_cli", "predict", str(scan), "-o", str(tmp_path / "out")]
        + ["--checkpoint", str(trained_run / "checkpoint_best.pt"), "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / scan.name.replace(".nii.gz", "_seg.nii.gz")).exists()
    assert not _imported(marks)


def test_what_the_refusal_relies_on_is_still_there():
    """MONAI's `optional_import` in `monai.utils.module` is the asker the refusal recognises, and the
    installed MONAI is one it was checked on: a MONAI that moves or renames it, or a newer one, fails here."""
    import monai.utils.module

    from unetr_cli.monai_extras import ASKER, CHECKED_MONAI, installed_monai

    module, function = ASKER
    asker = getattr(monai.utils.module, function)
    assert asker.__module__ == module and asker.__code__.co_name == function
    assert "import_module" in asker.__code__.co_names  # it imports the extras itself: its frame asks
    assert CHECKED_MONAI[0] <= installed_monai() < CHECKED_MONAI[1]
    assert installed_monai() == tuple(int(v) for v in monai.__version__.split(".")[:2])


def test_an_unchecked_monai_is_left_as_it_is(extras_installed):
    env, marks = extras_installed
    code = (
        "from unetr_cli import monai_extras\n"
        "monai_extras.CHECKED_MONAI = ((0, 1), (0, 2))  # as if the installed MONAI were newer\n"
        "monai_extras.skip_unused_extras()\n"
        "import monai\n"
    )
    done = _python(code, env)
    assert done.returncode == 0, done.stderr
    assert _imported(marks) == set(EXTRAS)  # nothing refused: MONAI loads as it is
