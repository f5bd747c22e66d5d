"""The real commands on CUDA, checked against the CPU where they must agree. Marked `gpu`: skipped where no
GPU is visible (CI); on a GPU machine `python -m pytest -m gpu` runs them (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import invoke, write_scan
from unetr_cli.checkpoint import safe_load
from unetr_cli.metrics import organ_dice
from unetr_cli.phantoms import make_phantom

pytestmark = pytest.mark.gpu

TINY = ("--preset", "tiny-cpu", "--seed", "0")
SAME_SETTINGS = ("--no-amp", "--mode", "constant")  # fp32 and constant blending on both devices


def _labels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).astype(np.int64)


def _agreement(a: Path, b: Path) -> float:
    return float(np.nanmean(organ_dice(_labels(a), _labels(b), 14)))


def _events(stdout: str, kind: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{") and f'"event": "{kind}"' in x]


@pytest.fixture(scope="module")
def gpu_scans(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu-scans")
    for name, orientation, oblique in (("lps", "LPS", 0.0), ("oblique", "LAS", 14.0)):
        phantom = make_phantom(31, (160, 144, 56), orientation=orientation, oblique_degrees=oblique)
        write_scan(folder / f"{name}.nii.gz", phantom.image, phantom.affine)
    return folder


@pytest.mark.parametrize("name", ["lps", "oblique"])
def test_predict_on_cuda_agrees_with_the_cpu(trained_run, gpu_scans, tmp_path, name):
    checkpoint = trained_run / "checkpoint_final.pt"
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.nii.gz"
        result = invoke(
            "predict",
            gpu_scans / f"{name}.nii.gz",
            "-o",
            out,
            "--checkpoint",
            checkpoint,
            "--device",
            device,
            *SAME_SETTINGS,
        )
        assert result.exit_code == 0, result.output
    assert _labels(tmp_path / "cuda.nii.gz").shape == nib.load(gpu_scans / f"{name}.nii.gz").shape
    assert _agreement(tmp_path / "cpu.nii.gz", tmp_path / "cuda.nii.gz") >= 0.999


def test_predict_on_cuda_with_every_option(trained_run, gpu_scans, tmp_path):
    out = tmp_path / "segs"
    result = invoke(
        "predict",
        gpu_scans,
        "-o",
        out,
        "--checkpoint",
        trained_run / "checkpoint_final.pt",
        "--device",
        "cuda:0",
        "--tta",
        "--resample",
        "labels",
        "--stats",
        "--preview",
        "--sw-batch-size",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.output
    predicted = _events(result.stdout, "predicted")
    assert len(predicted) == 2
    for event in predicted:  # each stage ends when its queued GPU work has finished
        assert set(event["stages"]) >= {"read", "preprocess", "windows", "to_scan_grid", "write"}
        assert event["stages"]["windows"] > 0
    for name in ("lps", "oblique"):
        assert (out / f"{name}_seg.nii.gz").is_file() and (out / f"{name}_seg_preview.png").is_file()
        stats = json.loads((out / f"{name}_seg_stats.json").read_text())
        assert sum(row["voxels"] for row in stats["organs"]) > 0


def test_out_of_memory_falls_back_and_says_so(trained_run, gpu_scans, tmp_path, monkeypatch):
    from unetr_cli.inference import scan as scan_module
    from unetr_cli.inference.segmenter import Segmenter

    original, calls = Segmenter._run_windows, {"windows": 0}

    def windows_once_out_of_memory(self, image):
        calls["windows"] += 1
        if calls["windows"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, image)

    def resampling_out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Segmenter, "_run_windows", windows_once_out_of_memory)
    monkeypatch.setattr(scan_module, "probabilities_to_labels_on_device", resampling_out_of_memory)
    out = tmp_path / "seg.nii.gz"
    checkpoint = trained_run / "checkpoint_final.pt"
    result = invoke(
        "predict", gpu_scans / "lps.nii.gz", "-o", out, "--checkpoint", checkpoint, "--device", "cuda"
    )
    assert result.exit_code == 0, result.output
    assert "GPU out of memory: retrying with --sw-batch-size 2" in result.stderr
    assert "GPU out of memory for lps.nii.gz: it ran on the CPU path instead" in result.stderr
    assert out.is_file()


@pytest.mark.parametrize("space", ["original", "resampled"])
def test_evaluate_on_cuda_matches_the_cpu(trained_run, tiny_dataset, tmp_path, space):
    scores = {}
    for device in ("cpu", "cuda"):
        result = invoke(
            "evaluate",
            "--data-dir",
            tiny_dataset,
            "--checkpoint",
            trained_run / "checkpoint_final.pt",
            "--space",
            space,
            "--device",
            device,
            "--no-hd95",
            *SAME_SETTINGS,
            "--output",
            tmp_path / f"{device}.json",
        )
        assert result.exit_code == 0, result.output
        scores[device] = json.loads((tmp_path / f"{device}.json").read_text())["summary"]["mean_dice"]
    assert scores["cuda"] == pytest.approx(scores["cpu"], abs=0.005)


def _train_on_cuda(dataset: Path, run: Path, *flags):
    """`unetr train` of the tiny preset on the GPU for 3 epochs (validation at the last), with `flags`."""
    return invoke(
        "train",
        *TINY,
        "--data-dir",
        dataset,
        "--logdir",
        run,
        "--max-epochs",
        "3",
        "--val-every",
        "3",
        "--device",
        "cuda",
        *flags,
        "--json",
    )


@pytest.mark.parametrize(
    ("amp_dtype", "precision"), [("bf16", "bf16 autocast"), ("fp16", "fp16 autocast + GradScaler")]
)
@pytest.mark.parametrize("pipeline", ["device", "host", "workers"])
def test_train_on_cuda(tiny_dataset, tmp_path, amp_dtype, precision, pipeline):
    run = tmp_path / "run"
    result = _train_on_cuda(
        tiny_dataset, run, "-s", f"optimisation.amp_dtype={amp_dtype}", "-s", f"data.pipeline={pipeline}"
    )
    assert result.exit_code == 0, result.output
    start = _events(result.stdout, "start")[0]
    assert start["precision"] == precision and start["device"].startswith("cuda")
    expected = {"device": "cached on cuda", "host": "cached in host", "workers": "loader process"}[pipeline]
    assert expected in start["data"], start["data"]
    epochs = _events(result.stdout, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all(np.isfinite(e["loss"]) for e in epochs)
    assert all(0 <= e["data_wait_s"] <= e["seconds"] for e in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"] and epochs[-1]["mean_dice"] >= 0
    scaler = safe_load(run / "checkpoint_final.pt")["scaler"]
    assert bool(scaler) == (amp_dtype == "fp16")  # a GradScaler state only where fp16 needs one


def test_cuda_graphs_train_as_eager_steps_do(tiny_dataset, tmp_path):
    """Graphed steps give the losses of eager ones (fp32); batches of 3 volumes out of 4 leave a short last
    batch each epoch, which runs eagerly; the batch-norm statistics the recording touched are restored."""
    losses = {}
    for graphs in ("true", "false"):
        run = tmp_path / graphs
        result = _train_on_cuda(
            tiny_dataset,
            run,
            "--no-amp",
            "-s",
            "optimisation.batch_size=3",
            "-s",
            f"optimisation.cuda_graphs={graphs}",
        )
        assert result.exit_code == 0, result.output
        assert _events(result.stdout, "warning") == []  # recorded: no fall-back to eager steps
        losses[graphs] = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    print(f"CUDA graphs: losses {losses['true']}, eager {losses['false']}")
    assert np.allclose(losses["true"], losses["false"], rtol=1e-3)


def test_resume_on_cuda(tiny_dataset, tmp_path):
    """Resume on a GPU: the loop state, the data order and the crops are exact; the weights may differ by
    what non-deterministic cuDNN kernels leave. Prints what holds."""
    common = [
        *TINY,
        "--data-dir",
        str(tiny_dataset),
        "--max-epochs",
        "4",
        "--val-every",
        "2",
        "--device",
        "cuda",
        "-q",
    ]
    assert invoke("train", *common, "--logdir", tmp_path / "straight").exit_code == 0
    assert invoke("train", *common, "--logdir", tmp_path / "split", "--stop-after", "2").exit_code == 0
    assert invoke("train", *common, "--logdir", tmp_path / "split", "--resume").exit_code == 0
    a = safe_load(tmp_path / "straight" / "checkpoint_final.pt")
    b = safe_load(tmp_path / "split" / "checkpoint_final.pt")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    diff = max(float((a["model"][k].float() - b["model"][k].float()).abs().max()) for k in a["model"])
    identical = all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    print(f"resume on CUDA: weights identical={identical}, max |straight - resumed| = {diff:.3g}")
    losses = [
        [json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("straight", "split")
    ]
    print(f"resume on CUDA: losses straight {losses[0]} resumed {losses[1]}")
    assert np.allclose(losses[0][:2], losses[1][:2], rtol=1e-3)  # before the stop: the same run
    assert np.allclose(losses[0], losses[1], rtol=0.05)


def test_finetune_on_cuda(trained_run, tiny_dataset, tmp_path):
    result = invoke(
        "finetune",
        "--from",
        trained_run / "checkpoint_final.pt",
        "--data-dir",
        tiny_dataset,
        "--logdir",
        tmp_path / "run",
        "--max-epochs",
        "1",
        "--device",
        "cuda",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert safe_load(tmp_path / "run" / "checkpoint_final.pt")["epoch"] == 1


@pytest.mark.parametrize("kind", ["--torchscript", "--safetensors"])
def test_export_checks_parity_on_cuda(trained_run, gpu_scans, tmp_path, kind):
    out = tmp_path / ("model.pt" if kind == "--torchscript" else "model.safetensors")
    result = invoke(
        "export", "--checkpoint", trained_run / "checkpoint_final.pt", kind, "-o", out, "--device", "cuda"
    )
    assert result.exit_code == 0, result.output
    parity = float(result.stdout.split("window: ")[1].split()[0])
    assert parity <= 1e-3
    trust = ("--trust-torchscript",) if kind == "--torchscript" else ()
    predicted = invoke(
        "predict", gpu_scans / "lps.nii.gz", "-o", tmp_path / "seg.nii.gz", "--checkpoint", out, *trust
    )
    assert predicted.exit_code == 0, predicted.output


def test_the_gpu_warms_up_while_the_model_is_built():
    """`devices.warming_up` creates the CUDA context in its own thread while the block runs (a fresh process,
    so nothing else has touched the GPU; the block itself makes no CUDA call), then runs the tasks it is
    given there, before the block ends."""
    code = (
        "import threading, time, torch\n"
        "from unetr_cli.devices import warming_up\n"
        "ran = []\n"
        "with warming_up(torch.device('cuda'), lambda: ran.append(threading.current_thread().name)):\n"
        "    waited = 0.0\n"
        "    while not torch.cuda.is_initialized() and waited < 60:\n"
        "        time.sleep(0.05)\n"
        "        waited += 0.05\n"
        "    print('initialised within the block:', torch.cuda.is_initialized())\n"
        "print('then ran in:', ran)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "initialised within the block: True" in done.stdout
    assert "then ran in: ['cuda-warm-up']" in done.stdout


def test_the_device_path_warms_up_on_a_blank_scan_before_the_first_scan(gpu_scans):
    """`scan.warm_up` runs the model once in a helper thread, after the stages that need no model warmed up
    (`scan.warm_up_stages`, as the model is built); the first real windows wait for it, and the label map is
    the one a segmenter that did not warm up makes."""
    import copy
    import threading

    from unetr_cli.inference.scan import BLANK_SHAPE, read_scan, segment_scan, warm_up, warm_up_stages
    from unetr_cli.inference.segmenter import Segmenter
    from unetr_cli.model import build_model
    from unetr_cli.settings import SettingsSources, resolve_settings

    settings = resolve_settings(SettingsSources(preset="tiny-cpu"), {"inference.device": "cuda"})
    model = build_model(settings.model)
    twin, callers = copy.deepcopy(model), []
    model.register_forward_hook(lambda *_: callers.append(threading.current_thread().name))
    scan = read_scan(gpu_scans / "lps.nii.gz")
    blank = warm_up_stages(settings, torch.device("cuda"))
    assert blank.shape == BLANK_SHAPE and blank.dtype == np.uint8  # ties of blank scores may go any way
    warmed = Segmenter(model, settings, torch.device("cuda"))
    warm_up(warmed)
    labels = segment_scan(scan, warmed)
    assert callers[0] == "unetr-beside" and set(callers[1:]) == {threading.current_thread().name}
    cold = segment_scan(scan, Segmenter(twin, settings, torch.device("cuda")))
    assert (labels == cold).mean() > 0.9999


def test_one_process_through_torchrun_uses_nccl(tiny_dataset, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "unetr_cli",
            "train",
            *TINY,
            "--data-dir",
            str(tiny_dataset),
            "--logdir",
            str(tmp_path / "run"),
            "--max-epochs",
            "1",
            "--nproc-per-node",
            "1",
            "--device",
            "cuda",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    start = _events(done.stdout, "start")[0]
    assert start["backend"] == "nccl" and start["device"] == "cuda:0" and start["world_size"] == 1
    assert (tmp_path / "run" / "checkpoint_final.pt").is_file()


def test_predict_through_torchrun_on_the_gpu(trained_run, gpu_scans, tmp_path):
    checkpoint = trained_run / "checkpoint_final.pt"
    result = invoke(
        "predict",
        gpu_scans,
        "-o",
        tmp_path / "segs",
        "--checkpoint",
        checkpoint,
        "--device",
        "cuda",
        "--nproc-per-node",
        "1",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert "2 written" in result.stdout


@pytest.mark.slow
def test_demo_on_cuda(tmp_path):
    result = invoke("demo", "--out", tmp_path / "demo", "--device", "cuda", "--json")
    assert result.exit_code == 0, result.output
    demo = _events(result.stdout, "demo")[0]
    print(
        f"demo on CUDA: {demo['minutes'] * 60:.0f} s, {demo['epochs']} epochs, "
        f"mean organ Dice {demo['mean_dice']:.3f}"
    )
    assert demo["mean_dice"] >= 0.75
