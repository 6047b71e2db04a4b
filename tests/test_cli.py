"""The `trl-srum` command: an overview, every command's own --help, and a clear refusal of unknown commands."""

import subprocess
import sys

import pytest

from trl_srum.cli import COMMANDS, main

from .helpers import script_env


def test_help_lists_every_command_and_exits_0():
    # Through the interpreter, as a user runs it: nothing heavy is imported for the overview.
    result = subprocess.run(
        [sys.executable, "-m", "trl_srum.cli", "--help"], env=script_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: trl-srum <command>")
    assert all(name in result.stdout for name in COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_prints_its_usage_and_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: trl-srum {command}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["rolout"], ["--rollout_dir", "x"]])
def test_an_unknown_command_exits_2_naming_it(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"unknown command {argv[0]!r}" in capsys.readouterr().err


def test_no_command_prints_the_usage_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "usage: trl-srum <command>" in capsys.readouterr().err
