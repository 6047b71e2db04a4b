"""The `trl-srum` command: an overview, every command's own --help, and a clear refusal of unknown commands."""

import subprocess
import sys

import pytest
import torch

from trl_srum.cli import COMMANDS, main
from trl_srum.models import load_unified_model
from trl_srum.models.bagel.tiny import tiny_bagel_model

from .helpers import script_env, tiny_rollout_dataset


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


def test_train_trains_on_a_saved_rollout_dataset_and_writes_weights_and_card(tmp_path):
    model = tiny_bagel_model(seed=0)
    model.save_pretrained(tmp_path / "model")
    tiny_rollout_dataset(model, num_rows=4).save_to_disk(str(tmp_path / "rollouts"))
    main(
        [
            "train",
            "--dataset_name", str(tmp_path / "rollouts"),
            "--model_name_or_path", str(tmp_path / "model"),
            "--output_dir", str(tmp_path / "out"),
            "--max_steps", "2",
            "--per_device_train_batch_size", "2",
            "--use_cpu", "true",
            "--report_to", "none",
            "--save_strategy", "no",
        ]
    )  # fmt: skip
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    trained = load_unified_model(out)
    assert any(not torch.equal(p, model.state_dict()[n]) for n, p in trained.state_dict().items())
