"""The torchrun worker: `python -m unetr_cli.training.worker JOB.json` trains one rank's part of the job that
`unetr train` / `unetr finetune` resolved and wrote (settings, run folder, run options, weights file)."""

from __future__ import annotations

import sys
from pathlib import Path

from unetr_cli.console import run_as_program
from unetr_cli.monai_extras import skip_unused_extras
from unetr_cli.training.launch import TrainingJob, run_job


def main(argv: list[str]) -> int:
    """Run the job; errors end this rank with the one-line message and exit code the CLI would give."""
    skip_unused_extras()
    return run_as_program(lambda: run_job(TrainingJob.from_json(Path(argv[0]).read_text())))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
