"""MONAI without the optional extras unetr does not use.

`import monai` imports every MONAI submodule, and they import each optional package MONAI can use that is
installed: scikit-image, pandas, transformers, OpenCV, CuPy, TensorRT, MLflow, scipy.stats and more. The MONAI
features unetr uses (UNETR, transforms, sliding windows, DiceCE, surface distances) need only `NEEDED`.

The unetr programs (the CLI and its torchrun workers) call `skip_unused_extras()` first. From then until
MONAI has loaded, in every thread, the imports that MONAI's `optional_import` asks for outside `NEEDED` are
refused, and MONAI keeps its placeholder, which raises only if used. So are `PLAIN_EXTRAS` when MONAI or
nibabel ask for them (nibabel loads with MONAI, or first in the thread that decodes the first scan). Every
other import, and every import once MONAI has loaded, is untouched; code that imports unetr as a library gets
MONAI as it is. So start-up no longer grows with what else is installed (`import_torch_monai_as_unetr_s` in
the benchmarks).

Who asks is told by the frame that imports: MONAI's `monai.utils.module.optional_import`. That is MONAI's
inner working, so the refusal is active only for the MONAI versions it was checked on (`CHECKED_MONAI`);
`tests/test_monai_extras.py` fails when MONAI moves or renames what it relies on, and when the installed MONAI
is outside that range, so the range is widened only after the check.
"""

from __future__ import annotations

import importlib.abc
import inspect
import sys
from pathlib import Path

# MONAI's optional imports that unetr's MONAI features use (with their parent packages and submodules).
NEEDED = ("einops", "monai", "nibabel", "numpy", "packaging", "scipy.ndimage", "scipy.spatial", "tqdm")

# Extras imported in a plain `try: import ... except ImportError`: matplotlib.pyplot by MONAI's
# jupyter_utils, pydicom by nibabel (only to parse DICOM extensions of NIfTI headers, which are then kept as
# bytes). Neither package requires them, so every such import is guarded; unetr imports both itself where it
# uses them (previews, DICOM series), after MONAI has loaded.
PLAIN_EXTRAS = ("matplotlib", "pydicom")

# The MONAI versions whose `optional_import` this was checked against: [first, beyond).
CHECKED_MONAI = ((1, 4), (1, 7))
ASKER = ("monai.utils.module", "optional_import")  # the module and function whose imports are judged


def skip_unused_extras() -> None:
    """Make this process's first `import monai` skip the extras unetr does not use (a checked MONAI only)."""
    if "monai" in sys.modules or any(isinstance(f, _MonaiFinder) for f in sys.meta_path):
        return
    version = installed_monai()
    if version is not None and CHECKED_MONAI[0] <= version < CHECKED_MONAI[1]:
        sys.meta_path.insert(0, _MonaiFinder())


def installed_monai() -> tuple[int, int] | None:
    """(major, minor) of the installed MONAI, read from its `_version.py` without importing it (importing
    `importlib.metadata` alone would cost more than this whole module saves on a small machine)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("monai")
    if spec is None or spec.origin is None:
        return None
    try:
        text = (Path(spec.origin).parent / "_version.py").read_text()
    except OSError:
        return None
    found = re.search(r'"version":\s*"(\d+)\.(\d+)', text)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _needed(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") or n.startswith(name + ".") for n in NEEDED)


def _refused(name: str) -> bool:
    """Whether the import being found is an extra that MONAI (or nibabel, for `PLAIN_EXTRAS`) asked for."""
    if _needed(name):
        return False
    frame = inspect.currentframe()
    frame = frame.f_back.f_back if frame is not None and frame.f_back else None  # past `find_spec`
    while frame is not None and _in_import_machinery(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return False
    asker = frame.f_globals.get("__name__") or ""
    if (asker, frame.f_code.co_name) == ASKER:
        return True
    return name.split(".")[0] in PLAIN_EXTRAS and asker.split(".")[0] in ("monai", "nibabel")


def _in_import_machinery(filename: str) -> bool:
    return filename.startswith("<frozen importlib") or filename.replace("\\", "/").endswith(
        "importlib/__init__.py"
    )


class _MonaiFinder(importlib.abc.MetaPathFinder):
    """Refuses MONAI's unused extras until MONAI has loaded, then leaves `sys.meta_path`."""

    def find_spec(self, name, path=None, target=None):
        if _refused(name):
            raise ModuleNotFoundError(f"{name}: an optional MONAI extra unetr does not load", name=name)
        if name != "monai":
            return None
        for finder in sys.meta_path:
            find = None if finder is self else getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None and spec.loader is not None:
                spec.loader = _ThenLeave(spec.loader, self)
                return spec
        return None


class _MonaiLoader(importlib.abc.Loader):
    """A MONAI module's own loader with something done around it; the module keeps its own loader."""

    def __init__(self, loader: importlib.abc.Loader, finder: _MonaiFinder) -> None:
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)


class _ThenLeave(_MonaiLoader):
    """Loads MONAI, then removes the finder."""

    def exec_module(self, module) -> None:
        try:
            super().exec_module(module)
        finally:
            if self.finder in sys.meta_path:
                sys.meta_path.remove(self.finder)
