"""MONAI without the optional extras unetr does not use.

`import monai` imports every MONAI submodule, and they import each optional package MONAI can use that is
installed: scikit-image, pandas, transformers, OpenCV, CuPy, TensorRT, MLflow, scipy.stats and more. The MONAI
features unetr uses (UNETR, transforms, sliding windows, DiceCE, surface distances) need only `NEEDED`.

The unetr programs (the CLI and its torchrun workers) call `skip_unused_extras()` first. From then until MONAI
has loaded, in every thread, the imports that MONAI's `optional_import` asks for outside `NEEDED` are
refused, and MONAI keeps its placeholder, which raises only if used. So are `PLAIN_EXTRAS` when MONAI or
nibabel ask for them (nibabel loads with MONAI, or first in the thread that decodes the first scan). Every
other import, and every import once MONAI has loaded, is untouched; code that imports unetr as a library gets
MONAI as it is. So start-up no longer grows with what else is installed (`import_torch_monai_as_unetr_s` in
the benchmarks).
"""

from __future__ import annotations

import importlib.abc
import sys

# MONAI's optional imports that unetr's MONAI features use (with their parent packages and submodules).
NEEDED = ("einops", "monai", "nibabel", "numpy", "packaging", "scipy.ndimage", "scipy.spatial", "tqdm")

# Extras imported in a plain `try: import ... except ImportError`: matplotlib.pyplot by MONAI's
# jupyter_utils, pydicom by nibabel (only to parse DICOM extensions of NIfTI headers, which are then kept as
# bytes). Neither package requires them, so every such import is guarded; unetr imports both itself where it
# uses them (previews, DICOM series), after MONAI has loaded.
PLAIN_EXTRAS = ("matplotlib", "pydicom")


def skip_unused_extras() -> None:
    """Make this process's first `import monai` skip the optional packages unetr does not use."""
    if "monai" not in sys.modules and not any(isinstance(f, _MonaiFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MonaiFinder())


def _needed(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") or n.startswith(name + ".") for n in NEEDED)


def _refused(name: str) -> bool:
    """Whether the import being found is an extra that MONAI (or nibabel, for `PLAIN_EXTRAS`) asked for."""
    if _needed(name):
        return False
    frame = sys._getframe(2)  # past this function and `find_spec`
    while frame is not None and _in_import_machinery(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return False
    asker = frame.f_globals.get("__name__") or ""
    if frame.f_code.co_name == "optional_import" and asker == "monai.utils.module":
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


class _ThenLeave(importlib.abc.Loader):
    """Runs MONAI's own loader, then removes the finder; MONAI keeps its own loader."""

    def __init__(self, loader: importlib.abc.Loader, finder: _MonaiFinder) -> None:
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        try:
            self.loader.exec_module(module)
        finally:
            if self.finder in sys.meta_path:
                sys.meta_path.remove(self.finder)
