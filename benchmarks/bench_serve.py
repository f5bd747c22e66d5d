"""`unetr serve` under a bounded load on loopback, against `unetr predict` on the same scans.

1. `unetr predict --report` (the service writes the same report) segments the N scans as one batch: its
   rate (scans per second from the model being ready to the last scan written) and its label maps, the
   reference for every result of the service.
2. `unetr serve` starts with the same weights on the same device; for each client count K, K threads share
   the N scans, each submitting one (POST /jobs), polling its job every 20 ms and fetching its label map.
   Latency: from the submission's first byte to the label map received. Throughput: N over the wall time
   from the first submission to the last result. Every result is compared voxel for voxel with predict's.

Standard UNETR with random weights (timing only), the 512 x 512 x S phantom CT of the other benchmarks.

    python benchmarks/bench_serve.py [--device cpu] [--slices 24] [--scans 8] [--clients 1 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
from common import DATA, benchmark_scan, json_events, run_measured, standard_checkpoint, write_result

POLL_S = 0.02


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _call(url: str, data: bytes | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=600) as answer:
        return answer.read()


def _one_job(base: str, scan: Path, body: bytes) -> tuple[float, bytes, str]:
    """Submit, follow, fetch: the latency, the label map's bytes, and the job's end state."""
    started = time.perf_counter()
    job = json.loads(_call(f"{base}/jobs?name={scan.name}", body))
    while True:
        state = json.loads(_call(f"{base}/jobs/{job['id']}"))
        if state["state"] in ("done", "failed"):
            break
        time.sleep(POLL_S)
    if state["state"] == "failed":
        return time.perf_counter() - started, b"", state["error"]
    labels = _call(f"{base}/jobs/{job['id']}/result")
    return time.perf_counter() - started, labels, "done"


def _load(base: str, scans: list[Path], clients: int, work: Path) -> dict:
    bodies = {scan: scan.read_bytes() for scan in scans}
    shares = [scans[index::clients] for index in range(clients)]
    latencies, results, errors = [], {}, []

    def client(share: list[Path]) -> None:
        for scan in share:
            seconds, labels, state = _one_job(base, scan, bodies[scan])
            latencies.append(seconds)
            if state != "done":
                errors.append(f"{scan.name}: {state}")
            else:
                results[scan] = labels

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    served = {}
    for scan, labels in results.items():
        path = work / f"served_{clients}_{scan.name}"
        path.write_bytes(labels)
        served[scan] = path
    return {"wall_s": wall, "latencies_s": sorted(latencies), "errors": errors, "served": served}


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()

    work = DATA / "serve"
    shutil.rmtree(work, ignore_errors=True)
    (work / "scans").mkdir(parents=True)
    source, checkpoint = benchmark_scan(args.slices), standard_checkpoint()
    scans = [work / "scans" / f"scan{index:02d}.nii.gz" for index in range(args.scans)]
    for scan in scans:
        shutil.copy(source, scan)

    command = [sys.executable, "-m", "unetr_cli", "predict", str(work / "scans"), "--json", "--report"]
    command += ["-o", str(work / "predicted"), "--checkpoint", str(checkpoint), "--device", args.device]
    batch = run_measured(command)
    ready, summary = json_events(batch["stdout"], "ready")[0], json_events(batch["stdout"], "summary")[0]
    batch_rate = args.scans / (summary["time"] - ready["time"])
    print(f"unetr predict, one batch of {args.scans}: {batch_rate:.3f} scans/s after start-up")

    port = _free_port()
    log = open(work / "serve.log", "w")  # noqa: SIM115 - open for the service's whole life
    serve = [sys.executable, "-m", "unetr_cli", "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    serve += ["--state", str(work / "state"), "--device", args.device, "--max-upload-mib", "4096"]
    started = time.perf_counter()
    service = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            if json.loads(_call(f"{base}/health"))["status"] == "ok":
                break
        except OSError:
            pass
        if service.poll() is not None or time.perf_counter() - started > 600:
            raise SystemExit(f"unetr serve did not become ready:\n{(work / 'serve.log').read_text()}")
        time.sleep(0.1)
    ready_s = time.perf_counter() - started
    print(f"unetr serve ready in {ready_s:.1f} s")

    loads = {}
    try:
        _one_job(base, scans[0], scans[0].read_bytes())  # the first job pays for the first kernels
        for clients in args.clients:
            run = _load(base, scans, clients, work)
            mismatched = [
                scan.name
                for scan, path in run["served"].items()
                if not np.array_equal(
                    np.asanyarray(nib.load(path).dataobj),
                    np.asanyarray(
                        nib.load(work / "predicted" / scan.name.replace(".nii", "_seg.nii")).dataobj
                    ),
                )
            ]
            rate = args.scans / run["wall_s"]
            loads[clients] = {
                "latency_p50_s": round(statistics.median(run["latencies_s"]), 3),
                "latency_p95_s": round(_p(run["latencies_s"], 95), 3),
                "scans_per_s": round(rate, 4),
                "vs_predict_batch_rate": round(rate / batch_rate, 3),
                "errors": run["errors"],
                "results_differing_from_predict": mismatched,
                "latencies_s": [round(v, 3) for v in run["latencies_s"]],
            }
            row = loads[clients]
            print(
                f"{clients} client(s): p50 {row['latency_p50_s']:.2f} s, p95 {row['latency_p95_s']:.2f} s, "
                f"{rate:.3f} scans/s ({row['vs_predict_batch_rate']:.2f}x predict's batch rate), "
                f"errors {len(run['errors'])}, differing from predict {len(mismatched)}"
            )
    finally:
        service.terminate()
        service.wait(timeout=600)
        log.close()
    result = {
        "device": args.device,
        "scan": f"512x512x{args.slices} int16 CT, 0.8x0.8x2.5 mm, LPS; standard UNETR, random weights",
        "scans": args.scans,
        "predict_batch_scans_per_s": round(batch_rate, 4),
        "serve_ready_s": round(ready_s, 2),
        "clients": loads,
    }
    device = args.device.split(":")[0]
    name = f"gpu_serve_{args.slices}" if device == "cuda" else f"serve_{device}_{args.slices}"
    print(f"wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
