"""Batch prediction on several processes (one per GPU) through torchrun.

`unetr predict ... --nproc-per-node N` resolves everything once and writes one job file; each process
(`python -m unetr_cli.inference.worker JOB.json`) reads the weights itself, segments its share of the scans
(every N-th, by global rank) on the GPU of its LOCAL_RANK, and leaves its outcome beside the job file, where
the launching command reads all of them back for one summary.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from unetr_cli.dicom import DicomSeries
from unetr_cli.distributed import Launch, dist_env
from unetr_cli.files import write_text
from unetr_cli.inference.batch import BatchResult, PredictOptions
from unetr_cli.settings import Settings


@dataclass(frozen=True)
class PredictJob:
    """Everything a prediction process needs, resolved once by `unetr predict`."""

    scans: list  # paths and DICOM series
    targets: list[Path]
    options: PredictOptions
    settings: Settings
    weights: Path
    trust_torchscript: bool
    output_mode: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "scans": [s.to_dict() if isinstance(s, DicomSeries) else str(s) for s in self.scans],
                "targets": [str(p) for p in self.targets],
                "options": dataclasses.asdict(self.options),
                "settings": self.settings.to_dict(),
                "weights": str(self.weights),
                "trust_torchscript": self.trust_torchscript,
                "output_mode": self.output_mode,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PredictJob:
        values = json.loads(text)
        return cls(
            scans=[DicomSeries.from_dict(s) if isinstance(s, dict) else Path(s) for s in values["scans"]],
            targets=[Path(p) for p in values["targets"]],
            options=PredictOptions(**values["options"]),
            settings=Settings.from_dict(values["settings"]),
            weights=Path(values["weights"]),
            trust_torchscript=values["trust_torchscript"],
            output_mode=values["output_mode"],
        )


def predict_on_processes(job: PredictJob, launch: Launch, processes: int) -> BatchResult:
    """Run `job` on `processes` processes of this node and merge what every process reports."""
    with tempfile.TemporaryDirectory(prefix="unetr-predict-") as folder:
        job_file = write_text(Path(folder) / "job.json", job.to_json())
        launch.start("unetr_cli.inference.worker", [str(job_file)], processes, job="prediction")
        merged = BatchResult()
        for outcome in sorted(Path(folder).glob("rank-*.json")):
            values = json.loads(outcome.read_text())
            merged.written += [Path(p) for p in values["written"]]
            merged.skipped += [Path(p) for p in values["skipped"]]
            merged.failed.update({Path(k): v for k, v in values["failed"].items()})
            merged.flagged.update({Path(k): v for k, v in values["flagged"].items()})
    return merged


def run_share(job: PredictJob, job_file: Path) -> None:
    """Segment this process's share of the scans and leave the outcome beside the job file."""
    from unetr_cli.checkpoint import read_weights
    from unetr_cli.console import Reporter
    from unetr_cli.devices import rank_device, resolve_device
    from unetr_cli.inference.batch import predict_batch
    from unetr_cli.inference.scan import load_segmenter

    env = dist_env()
    device = rank_device(resolve_device(job.settings.inference.device))
    share = slice(env.rank, None, env.world_size)
    result = predict_batch(
        job.scans[share],
        job.targets[share],
        lambda: load_segmenter(
            job.settings, device, lambda: read_weights(job.weights, job.trust_torchscript)
        ),
        device,
        job.options,
        Reporter(job.output_mode),
    )
    outcome = {
        "written": [str(p) for p in result.written],
        "skipped": [str(p) for p in result.skipped],
        "failed": {str(k): v for k, v in result.failed.items()},
        "flagged": {str(k): v for k, v in result.flagged.items()},
    }
    write_text(job_file.with_name(f"rank-{env.rank}.json"), json.dumps(outcome))


def main(argv: list[str]) -> int:
    """The worker: errors end this process with the one-line message and exit code the CLI would give."""
    from unetr_cli.console import run_as_program
    from unetr_cli.monai_extras import skip_unused_extras

    skip_unused_extras()
    job_file = Path(argv[0])
    return run_as_program(lambda: run_share(PredictJob.from_json(job_file.read_text()), job_file))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
