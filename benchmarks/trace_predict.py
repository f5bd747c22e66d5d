"""Which thread ran what, and when, in one `unetr predict` invocation: the functions on its path are wrapped
and each call is printed as start, end and seconds since the process began (wall clock), with its thread.
A developer's tool for the start-up of a single invocation, where the stages of `--json` overlap.

    T0=$(date +%s.%N) python benchmarks/trace_predict.py TRACE.json predict SCAN -o OUT --device cuda ...

T0 (the launcher's clock when it started the process) makes the interpreter's own start visible; without it,
times count from this script's first line.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import sys
import threading
import time

T0 = float(os.environ.get("T0", time.time()))
CALLS = []
TRACED = [
    ("unetr_cli.checkpoint", "read_weights"),
    ("unetr_cli.devices", "resolve_device"),
    ("unetr_cli.devices", "_first_kernels"),
    ("unetr_cli.model", "model_with_weights"),
    ("unetr_cli.model", "build_model"),
    ("unetr_cli.model", "convert_state_dict"),
    ("unetr_cli.inference.segmenter", "Segmenter.__init__"),
    ("unetr_cli.inference.segmenter", "Segmenter.blank_windows"),
    ("unetr_cli.inference.segmenter", "Segmenter.logits"),
    ("unetr_cli.inference.batch", "predict_batch"),
    ("unetr_cli.inference.batch", "read_scan"),
    ("unetr_cli.inference.batch", "find_body"),
    ("unetr_cli.inference.batch", "segment_scan"),
    ("unetr_cli.inference.batch", "orientation_after_inference"),
    ("unetr_cli.inference.batch", "write_label_sidecars"),
    ("unetr_cli.inference.batch", "save_nifti"),
    ("nibabel.nifti1", "Nifti1Image.to_bytes"),
    ("unetr_cli.volumes", "write_gzip"),
    ("unetr_cli.files", "_fsync"),
    ("unetr_cli.inference.scan", "warm_up_stages"),
    ("unetr_cli.inference.scan", "preprocess_scan"),
    ("unetr_cli.inference.scan", "_to_device"),
    ("unetr_cli.inference.scan", "probabilities_to_labels_on_device"),
]


def note(what: str, start: float) -> None:
    CALLS.append((threading.current_thread().name, what, start, time.time() - T0))


def trace(module_name: str, qualname: str) -> None:
    """Replace `module.qualname` (a function or Class.method) by a wrapper that notes each call."""
    owner = importlib.import_module(module_name)
    *classes, attr = qualname.split(".")
    for name in classes:
        owner = getattr(owner, name)
    original = getattr(owner, attr)

    @functools.wraps(original)
    def traced(*args, **kwargs):
        start = time.time() - T0
        try:
            return original(*args, **kwargs)
        finally:
            note(f"{module_name.rsplit('.', 1)[-1]}.{qualname}", start)

    setattr(owner, attr, traced)


def report(path: str) -> None:
    note("exit handlers", time.time() - T0)
    calls = sorted(CALLS, key=lambda call: call[2])
    rows = [{"thread": t, "what": w, "start": round(s, 3), "end": round(e, 3)} for t, w, s, e in calls]
    with open(path, "w") as handle:
        json.dump(rows, handle, indent=0)
    for row in rows:
        seconds = row["end"] - row["start"]
        print(
            f"{row['start']:7.3f} {row['end']:7.3f} {seconds:6.3f}  {row['thread']:14s} {row['what']}",
            file=sys.stderr,
        )


def main() -> None:
    trace_path = sys.argv.pop(1)
    note("interpreter started", 0.0)
    started = time.time() - T0
    import torch  # noqa: F401  (timed on its own: the platform's share)

    note("import torch", started)
    from unetr_cli.monai_extras import skip_unused_extras

    skip_unused_extras()
    started = time.time() - T0
    import unetr_cli.cli as cli

    note("import unetr_cli.cli", started)
    for module_name, qualname in TRACED:
        trace(module_name, qualname)
    atexit.register(report, trace_path)  # `cli.main` runs the exit handlers before it ends the process
    sys.argv = ["unetr", *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
