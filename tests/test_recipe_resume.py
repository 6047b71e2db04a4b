"""The main job's recipe, killed during training and started again, ends as an uninterrupted run (issue: the recipe
used to ignore `--resume_from_checkpoint`)."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_srum.models.bagel.tiny import tiny_bagel_model

from .helpers import REPO_ROOT, script_env


RECIPE = REPO_ROOT / "recipes" / "srum_bagel.py"
KILLER = REPO_ROOT / "tests" / "scripts" / "run_until_checkpoint.py"


def tiny_recipe(folder: Path) -> Path:
    """A recipe of the main job's shape on a tiny random BAGEL: seconds instead of minutes."""
    tiny_bagel_model(seed=0).save_pretrained(folder / "model")
    (folder / "prompts.txt").write_text("a red circle\ntwo blue squares\na green triangle\n")
    settings = {
        "model_name_or_path": str(folder / "model"),
        "prompts_file": str(folder / "prompts.txt"),
        "rollout_dir": str(folder / "unused"),
        "num_candidates": 2,
        "image_width": 16,
        "image_height": 16,
        "generation_kwargs": {"num_timesteps": 2},
        "rollout_batch_size": 3,
        "proposer": "none",
        "judge_mode": "prob",
        "judge_style": "concise",
        "output_dir": str(folder / "out"),
        "use_cpu": True,
        "seed": 0,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "per_device_train_batch_size": 2,
        "max_steps": 6,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 1,
        "report_to": "none",
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], env=script_env(), capture_output=True, text=True, timeout=300)


def run_recipe(recipe: Path, *extra: str) -> None:
    result = run(str(RECIPE), "--config", str(recipe), *extra)
    assert result.returncode == 0, result.stderr[-4000:]


def logged_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "round-0" / "checkpoint-6" / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


@pytest.mark.slow
@pytest.mark.parametrize("resume", ["true", "checkpoint"])
def test_a_killed_recipe_resumed_from_its_checkpoint_logs_the_losses_of_an_uninterrupted_run(tmp_path, resume):
    uninterrupted = tiny_recipe(tmp_path / "uninterrupted")
    run_recipe(uninterrupted)

    killed = tiny_recipe(tmp_path / "killed")
    result = run(str(KILLER), "3", str(RECIPE), "--config", str(killed))
    assert result.returncode == -signal.SIGKILL, result.stderr[-4000:]
    checkpoint = tmp_path / "killed" / "out" / "round-0" / "checkpoint-3"
    assert checkpoint.is_dir() and not (checkpoint.parent / "checkpoint-4").exists()

    run_recipe(killed, "--resume_from_checkpoint", "true" if resume == "true" else str(checkpoint))
    expected, got = logged_losses(tmp_path / "uninterrupted" / "out"), logged_losses(tmp_path / "killed" / "out")
    assert sorted(expected) == list(range(1, 7))
    assert got == pytest.approx(expected, abs=1e-6, rel=0)
