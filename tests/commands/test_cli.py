"""The command line as a user meets it: help, version, error lines and exit codes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import invoke
from unetr_cli import __version__

COMMANDS = ("train", "finetune", "predict", "evaluate", "export", "download", "synth", "config", "demo")


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f" {command} " in result.stdout, command


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "config"] + ["config show"])
def test_every_command_help_ends_with_examples(command):
    result = invoke(*command.split(), "--help")
    assert result.exit_code == 0
    assert "Examples" in result.stdout
    assert f"unetr {command.split()[0]}" in result.stdout.split("Examples")[1]


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"unetr {__version__}"


def test_help_imports_no_torch():
    """Help stays instant because it loads none of the heavy libraries (how long it takes is measured in
    benchmarks/, not here: a busy machine is not a broken feature)."""
    code = (
        "import sys\n"
        "from unetr_cli.cli import app\n"
        "try:\n    app(['--help'], prog_name='unetr')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'monai', 'nibabel', 'scipy') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in done.stderr, done.stderr


def test_python_dash_m_runs_the_same_cli():
    done = subprocess.run([sys.executable, "-m", "unetr_cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.strip() == f"unetr {__version__}"


def test_usage_error_is_exit_2_without_traceback():
    result = invoke("config", "show", "--set", "model.img_size=40")
    assert result.exit_code == 2
    assert "model.img_size = 40: must be a multiple of 16" in result.stderr
    assert "Traceback" not in result.output


def test_debug_flag_shows_the_traceback():
    from unetr_cli.errors import SettingsError

    with pytest.raises(SettingsError):
        invoke("--debug", "config", "show", "--set", "model.img_size=40")


def test_debug_env_var_shows_the_traceback(monkeypatch):
    from unetr_cli.errors import SettingsError

    monkeypatch.setenv("UNETR_DEBUG", "1")
    with pytest.raises(SettingsError):
        invoke("config", "show", "--set", "model.img_size=40")


def test_unknown_command_is_a_usage_error():
    result = invoke("trian")
    assert result.exit_code == 2


_MAIN = """
import atexit, pathlib, sys
MARKER = sys.argv[1]

class LeftToTheSystem:
    def __del__(self):
        print("interpreter teardown ran", file=sys.stderr)

kept = LeftToTheSystem()  # freed only by the interpreter's own teardown
sys.argv = ["unetr", *sys.argv[2:]]
from unetr_cli.cli import main
atexit.register(pathlib.Path(MARKER).touch)  # as the command's own handlers are: after unetr is imported
main()
"""


@pytest.mark.parametrize(("args", "code"), [(["config", "show"], 0), (["config", "show", "--set", "x=1"], 2)])
def test_the_process_ends_at_once_with_its_code_output_and_exit_handlers(tmp_path, args, code):
    marker = tmp_path / "exit-handlers-ran"
    done = subprocess.run([sys.executable, "-c", _MAIN, str(marker), *args], capture_output=True, text=True)
    assert done.returncode == code, done.stderr
    assert marker.exists()  # e.g. the temporary folder of an unzipped DICOM series is removed
    assert "interpreter teardown ran" not in done.stderr  # the slow part skipped
    if code == 0:
        assert done.stdout == invoke(*args).stdout  # every line of the output, flushed before the end
    else:
        assert "x=1" in done.stderr and "Traceback" not in done.stderr


def _option_names(command: str) -> list[str]:
    import typer.main

    from unetr_cli.cli import app

    found = typer.main.get_command(app)
    for word in command.split():
        found = found.commands[word]
    return [name for p in found.params for name in (*p.opts, *p.secondary_opts) if name.startswith("--")]


@pytest.mark.parametrize("columns", ["80", "120"])
@pytest.mark.parametrize("command", ["train", "finetune", "predict", "evaluate", "export", "serve"])
def test_help_shows_every_option_name_in_full(command, columns):
    """Rich cuts long names in a narrow table ("--pretrained-model-…"); below 100 columns the plain layout
    takes over, so a user on an 80-column terminal can read every flag."""
    result = invoke(*command.split(), "--help", env={"COLUMNS": columns})
    assert result.exit_code == 0
    shown = set(re.split(r"[\s,│]+", result.stdout))
    missing = [name for name in _option_names(command) if name not in shown]
    assert "…" not in result.stdout and missing == [], missing
    assert max(len(line) for line in result.stdout.splitlines()) <= int(columns)
