"""MONAI without the optional extras and the subpackages unetr does not use.

`import monai` imports every MONAI submodule (every subpackage, then every module of each, for its bundle
configs' component lookup), and they import each optional package MONAI can use that is installed:
scikit-image, pandas, transformers, OpenCV, CuPy, TensorRT, MLflow, scipy.stats and more. The MONAI features
unetr uses (UNETR, transforms, sliding windows, DiceCE, surface distances) need only `NEEDED`.

The unetr programs (the CLI and its torchrun workers) call `skip_unused_extras()` first. From then until MONAI
has loaded, in every thread:
- the imports that MONAI's `optional_import` asks for outside `NEEDED` are refused, and MONAI keeps its
  placeholder, which raises only if used. So are `PLAIN_EXTRAS` when MONAI or nibabel ask for them (nibabel
  loads with MONAI, or first in the thread that decodes the first scan);
- MONAI's own loading of its submodules imports only `USED_PACKAGES`, in its order; any other MONAI module is
  imported when something imports it (a quarter of `import monai`'s time on this project's CPU).
Every other import, and every import once MONAI has loaded, is untouched; code that imports unetr as a library
gets MONAI as it is. So start-up no longer grows with what else is installed (`import_torch_monai_as_unetr_s`
in the benchmarks).
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

# MONAI's optional imports that unetr's MONAI features use (with their parent packages and submodules).
NEEDED = ("einops", "monai", "nibabel", "numpy", "packaging", "scipy.ndimage", "scipy.spatial", "tqdm")

# Extras imported in a plain `try: import ... except ImportError`: matplotlib.pyplot by MONAI's
# jupyter_utils, pydicom by nibabel (only to parse DICOM extensions of NIfTI headers, which are then kept as
# bytes). Neither package requires them, so every such import is guarded; unetr imports both itself where it
# uses them (previews, DICOM series), after MONAI has loaded.
PLAIN_EXTRAS = ("matplotlib", "pydicom")

# The MONAI subpackages `import monai` loads for the unetr programs: monai.apps first, as MONAI does, since
# the others' imports need it (monai.data imports monai.transforms, which imports monai.apps, which imports
# monai.data). unetr imports the rest it uses (monai.losses, monai.metrics) where it uses them.
USED_PACKAGES = (
    "monai.apps",
    "monai.config",
    "monai.data",
    "monai.inferers",
    "monai.networks",
    "monai.transforms",
    "monai.utils",
)


def skip_unused_extras() -> None:
    """Make this process's first `import monai` skip the extras and subpackages unetr does not use."""
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
        wrappers = {"monai": _ThenLeave, "monai.utils.module": _OnlyUsedPackages}
        if name not in wrappers:
            return None
        for finder in sys.meta_path:
            find = None if finder is self else getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None and spec.loader is not None:
                spec.loader = wrappers[name](spec.loader, self)
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


class _OnlyUsedPackages(_MonaiLoader):
    """Loads `monai.utils.module` with its `load_submodules` narrowed while MONAI loads: for MONAI's own
    package, the first call (its subpackages) imports `USED_PACKAGES`, the second (every module) nothing."""

    def exec_module(self, module) -> None:
        super().exec_module(module)
        load_submodules, finder = module.load_submodules, self.finder

        def load_used(basemod, load_all: bool = True, exclude_pattern: str = "(.*[tT]est.*)|(_.*)"):
            if basemod.__name__ != "monai" or finder not in sys.meta_path:
                return load_submodules(basemod, load_all, exclude_pattern)
            packages = [] if load_all else [importlib.import_module(name) for name in USED_PACKAGES]
            return packages, []

        module.load_submodules = load_used
