"""Shared helpers for the benchmarks: timed child processes with peak RSS, test scans, machine facts."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DATA = ROOT / ".data"


def run_measured(command: list[str], env: dict | None = None) -> dict:
    """Run a command in a child process; return wall seconds (and the wall-clock times it started and ended,
    to place the child's timestamped `--json` events), the child's peak RSS (MB) and its output.

    The output goes to temporary files, not pipes: a child that prints more than a pipe holds (64 KB, a long
    `unetr train --json`) would otherwise block until it is read, and it is read only after the child ends.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started, started_at = time.perf_counter(), time.time()
        environment = {**os.environ, **(env or {})}
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=environment)
        _, status, usage = os.wait4(child.pid, 0)
        seconds, ended_at = time.perf_counter() - started, time.time()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}):\n{stderr[-3000:]}")
    return {
        "seconds": seconds,
        "started_at": started_at,
        "ended_at": ended_at,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,
        "stdout": stdout,
        "stderr": stderr,
    }


def json_events(stdout: str, kind: str) -> list[dict]:
    """The `--json` events of one kind in a child's output."""
    lines = (json.loads(line) for line in stdout.splitlines() if line.startswith("{"))
    return [event for event in lines if event.get("event") == kind]


def invocation_breakdown(run: dict) -> dict:
    """Where the wall time of one `unetr predict --json` invocation of one scan went: start-up (interpreter,
    imports, weights, model on the device), the scan's stages, and the exit after the summary."""
    ready = json_events(run["stdout"], "ready")[0]
    predicted = json_events(run["stdout"], "predicted")[0]
    summary = json_events(run["stdout"], "summary")[0]
    return {
        "wall_s": round(run["seconds"], 3),
        "startup_s": round(ready["time"] - run["started_at"], 3),
        **{f"{name}_s": seconds for name, seconds in predicted["stages"].items()},
        "exit_s": round(run["ended_at"] - summary["time"], 3),
    }


_FIRST_KERNELS = """
import torch
d = torch.device({device!r})
x, w = torch.zeros(1, 1, 16, 16, 16, device=d), torch.zeros(8, 1, 3, 3, 3, device=d)
torch.nn.functional.conv3d(x, w)
torch.zeros(64, 64, device=d) @ torch.zeros(64, 64, device=d)
torch.cuda.synchronize() if d.type == "cuda" else None
"""

_FIRST_WINDOWS = """
import json, time, torch
from unetr_cli.inference.segmenter import Segmenter
from unetr_cli.model import build_model
from unetr_cli.settings import SettingsSources, resolve_settings
settings = resolve_settings(SettingsSources())
d = torch.device({device!r})
segmenter = Segmenter(build_model(settings.model), settings, d)
size = settings.model.img_size
image = torch.rand(1, 1, size, size, 2 * size, device=d)  # two windows, as in every scan
seconds = []
for _ in range(2):
    started = time.perf_counter()
    segmenter.logits(image)
    seconds.append(time.perf_counter() - started)  # logits() ends in a host sync (its finiteness check)
print(json.dumps(seconds))
"""


_AS_UNETR = (
    "import torch; from unetr_cli.monai_extras import skip_unused_extras; skip_unused_extras(); import monai"
)


def platform_floors(device: str, runs: int = 3) -> dict:
    """What any process pays before `unetr` does anything of its own, in seconds (median of `runs` fresh
    interpreters each): the interpreter, `import torch`, `import torch, monai` as it is and as the unetr
    programs load it (without the optional extras unetr does not use), and torch with its first convolution
    and matrix product on `device` (on a GPU: the CUDA context and loading cuDNN and cuBLAS).
    Then what the first windows of a process cost against the next ones: the standard UNETR's first
    sliding-window call on `device` (two windows; on a GPU it picks and loads every kernel the model needs)
    and its second."""
    probes = {
        "python_s": "pass",
        "import_torch_s": "import torch",
        "import_torch_monai_s": "import torch, monai",
        "import_torch_monai_as_unetr_s": _AS_UNETR,
        "torch_first_kernels_s": _FIRST_KERNELS.format(device=device),
    }
    floors = {
        name: round(median([run_measured([sys.executable, "-c", code])["seconds"] for _ in range(runs)]), 3)
        for name, code in probes.items()
    }
    windows = run_measured([sys.executable, "-c", _FIRST_WINDOWS.format(device=device)])
    first, second = json.loads(windows["stdout"].strip().splitlines()[-1])
    return {**floors, "first_two_windows_s": round(first, 3), "next_two_windows_s": round(second, 3)}


def median(values: list[float]) -> float:
    return statistics.median(values)


def benchmark_scan(slices: int = 200, seed: int = 1) -> Path:
    """A 512 x 512 x `slices` phantom CT, int16, 0.8 x 0.8 x 2.5 mm, stored LPS (cached)."""
    path = DATA / f"scan_512x512x{slices}.nii.gz"
    if not path.exists():
        from unetr_cli.phantoms import make_phantom
        from unetr_cli.volumes import save_nifti

        phantom = make_phantom(seed, (512, 512, slices), spacing=(0.8, 0.8, 2.5), orientation="LPS")
        save_nifti(phantom.image, phantom.affine, path)
        save_nifti(phantom.label, phantom.affine, path.with_name(path.name.replace("scan_", "truth_")))
    return path


def standard_checkpoint(preset: str = "btcv") -> Path:
    """The preset's architecture (the standard BTCV one by default) with random weights (seed 0), as a unetr
    checkpoint (cached)."""
    path = DATA / ("standard_random.pt" if preset == "btcv" else f"{preset}_random.pt")
    if not path.exists():
        import torch

        from unetr_cli.checkpoint import CHECKPOINT_FORMAT, atomic_save
        from unetr_cli.model import build_model
        from unetr_cli.settings import SettingsSources, resolve_settings

        settings = resolve_settings(SettingsSources(preset=preset))
        torch.manual_seed(0)
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "model": build_model(settings.model).state_dict(),
                "settings": settings.to_dict(),
            },
            path,
        )
    return path


def trained_checkpoint() -> Path:
    """A model trained by `unetr demo` (cached): meaningful labels for agreement checks."""
    path = DATA / "demo" / "run" / "checkpoint_latest.pt"
    if not path.exists():
        subprocess.run(
            [sys.executable, "-m", "unetr_cli", "demo", "--out", str(DATA / "demo"), "--overwrite", "-q"],
            check=True,
        )
    return path


def machine() -> dict:
    """What the numbers were measured on."""
    import monai
    import torch

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "monai": monai.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(name: str, result: dict) -> Path:
    """Save a benchmark's numbers as JSON next to the scripts (results/NAME.json)."""
    folder = ROOT / "results"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    return path


def mean_dice(a: Path, b: Path) -> float:
    """Mean organ Dice between two label maps on the same grid (organs present in either)."""
    import numpy as np

    from unetr_cli.metrics import organ_dice
    from unetr_cli.volumes import load_volume

    first, _ = load_volume(a, dtype=None)
    second, _ = load_volume(b, dtype=None)
    return float(np.nanmean(organ_dice(first.astype(np.int64), second.astype(np.int64), 14)))
