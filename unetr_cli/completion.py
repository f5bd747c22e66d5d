"""Shell completion scripts for bash, zsh and fish, generated from the app by Typer.

The scripts in the repository's `completions/` folder are regenerated with
`python -m unetr_cli.completion completions/`; a test fails when they are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from unetr_cli.files import write_text

SHELLS = {"bash": "unetr.bash", "zsh": "_unetr", "fish": "unetr.fish"}


def completion_script(shell: str) -> str:
    """The completion script Typer generates for the `unetr` program in `shell`."""
    from typer._completion_shared import get_completion_script

    return (
        get_completion_script(prog_name="unetr", complete_var="_UNETR_COMPLETE", shell=shell).rstrip() + "\n"
    )


def write_completions(folder: Path) -> list[Path]:
    """Write one script per shell into `folder`."""
    return [write_text(folder / name, completion_script(shell)) for shell, name in SHELLS.items()]


if __name__ == "__main__":
    for written_path in write_completions(Path(sys.argv[1] if len(sys.argv) > 1 else "completions")):
        print(written_path)
