"""The shipped completion scripts match what the app generates."""

from pathlib import Path

import pytest

from unetr_cli.completion import SHELLS, completion_script

COMPLETIONS = Path(__file__).resolve().parents[1] / "completions"


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_completion_scripts_are_current(shell):
    shipped = COMPLETIONS / SHELLS[shell]
    assert shipped.read_text() == completion_script(shell), (
        f"{shipped} is stale: run `python -m unetr_cli.completion completions/`"
    )


def test_completion_lists_subcommands(monkeypatch, capsys):
    from unetr_cli.cli import app

    monkeypatch.setenv("_UNETR_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "unetr sy")
    monkeypatch.setenv("COMP_CWORD", "1")
    with pytest.raises(SystemExit):
        app(prog_name="unetr")
    assert "synth" in capsys.readouterr().out.split()
