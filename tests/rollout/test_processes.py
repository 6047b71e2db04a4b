"""Stage 1 through its command line in real processes: killed and resumed, and spread over two CPU processes, it
writes exactly the rows of one uninterrupted single-process run.

`accelerate launch --cpu --num_processes 2` silently starts one process, so the two-process run goes through the
MULTI_GPU launcher (`recipes/accelerate_configs/cpu_ddp.yaml`); without a GPU the runner joins a CPU (gloo) group.
"""

import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trl_srum.cli import main as cli_main
from trl_srum.models import load_unified_model
from trl_srum.models.bagel.tiny import tiny_bagel_model
from trl_srum.rollout import RolloutConfig, config_prompts, run_rollouts

from ..helpers import REPO_ROOT, free_port, script_env
from .utils import assert_same_rows


ACCELERATE_CONFIG = REPO_ROOT / "recipes" / "accelerate_configs" / "cpu_ddp.yaml"
PROMPTS = [
    "a red circle",
    "two blue squares",
    "",
    "a green triangle above a yellow circle",
    "an orange square",
    "three purple stars",
    "a white ball to the left of a black box",
    "a pink rectangle",
]
# Keys of a full SRUM recipe that stage 1 must ignore.
TRAINING_KEYS = {"learning_rate": 1.0e-4, "per_device_train_batch_size": 4, "use_cpu": True, "max_steps": 10}
STAGE1 = {
    "image_width": 16,
    "image_height": 16,
    "generation_kwargs": {"num_timesteps": 2},
    "proposer": "components",
    "relevance_threshold": 0.3,
    "judge_style": "concise",
    "judge_max_new_tokens": 16,
    "judge_retries": 2,
    "num_candidates": 2,
    "rollout_seed": 7,
    "gallery_size": 2,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stage1")
    tiny_bagel_model(seed=0).save_pretrained(root / "model")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


def write_recipe(root: Path, name: str, **stage1) -> Path:
    recipe = {
        "model_name_or_path": str(root / "model"),
        "prompts_file": str(root / "prompts.txt"),
        "rollout_dir": str(root / name),
        **stage1,
        **TRAINING_KEYS,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def uninterrupted(root: Path, name: str, **stage1):
    """The reference: one process, never interrupted, the model loaded as the command line loads it."""
    model = load_unified_model(root / "model", dtype="float32").eval()
    config = RolloutConfig(rollout_dir=str(root / name), prompts_file=str(root / "prompts.txt"), **stage1)
    prompts = config_prompts(config)
    return run_rollouts(model, prompts, config)


def shards(rollout_dir: Path) -> list[Path]:
    return sorted((rollout_dir / "shards").glob("batch-*"))


@pytest.mark.slow
def test_killed_and_resumed_run_writes_the_rows_of_an_uninterrupted_one(workspace):
    # text judge: the sampled retries must also come out the same after a resume
    stage1 = {**STAGE1, "judge_mode": "text", "rollout_batch_size": 1}
    total = len(PROMPTS) * stage1["num_candidates"]
    recipe = write_recipe(workspace, "resumed", **stage1)
    rollout_dir = workspace / "resumed"
    process = subprocess.Popen(
        [sys.executable, "-m", "trl_srum.cli", "rollout", "--config", str(recipe)],
        env=script_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not shards(rollout_dir) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    written = shards(rollout_dir)
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    assert 0 < len(written) < total, f"killed after {len(written)} of {total} shards"
    assert not (rollout_dir / "dataset").exists()
    stamps = {shard.name: shard.stat().st_mtime_ns for shard in written}

    # Run again to completion (in this process: it also checks that the command line recorded the same settings).
    resumed = uninterrupted(workspace, "resumed", **stage1)
    assert {shard.name: shard.stat().st_mtime_ns for shard in shards(rollout_dir) if shard.name in stamps} == stamps
    assert len(shards(rollout_dir)) == total
    reference = uninterrupted(workspace, "reference-text", **stage1)
    assert_same_rows(resumed, reference)
    assert resumed["status"].count("invalid_prompt") == 2 and resumed["status"].count("judge_failed") == total - 2


@pytest.mark.slow
def test_two_cpu_processes_write_the_rows_of_one(workspace):
    stage1 = {**STAGE1, "judge_mode": "prob", "rollout_batch_size": 3}
    recipe = write_recipe(workspace, "two-processes", **stage1)
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ACCELERATE_CONFIG),
        "--main_process_port", str(free_port()),
        "-m", "trl_srum.cli", "rollout", "--config", str(recipe),
    ]  # fmt: skip
    result = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-5000:]
    # both processes ran, and each took its round-robin share of the 6 batches
    taken = dict(re.findall(r"stage 1: process (\d) of 2 takes (\d+) of 6 batches", result.stderr))
    assert taken == {"0": "3", "1": "3"}, result.stderr[-5000:]
    assert result.stdout.count("wrote 16 rollout rows to") == 1  # printed by the main process only

    two = load_from_disk_dataset(workspace / "two-processes")
    one = uninterrupted(workspace, "one-process", **stage1)
    assert_same_rows(two, one)
    # the comparison is about real images and scores
    assert one["status"].count("ok") == 14 and sum(map(len, one["regions"])) > 0
    assert len({score for score in one["global_score"] if score is not None}) > 1
    assert (workspace / "two-processes" / "summary.json").is_file()
    assert len(list((workspace / "two-processes" / "gallery").glob("*.png"))) == 2


def load_from_disk_dataset(rollout_dir: Path):
    from datasets import load_from_disk

    return load_from_disk(str(rollout_dir / "dataset"))


@pytest.fixture(autouse=True)
def restore_package_logger():
    """The command line sets up logging for the package; leave the test session's logging as it was."""
    package_logger = logging.getLogger("trl_srum")
    handlers, level = list(package_logger.handlers), package_logger.level
    yield
    package_logger.handlers[:], package_logger.level = handlers, level


def test_command_line_reads_a_recipe_and_ignores_training_keys(workspace, capsys):
    recipe = write_recipe(workspace, "cli", **{**STAGE1, "judge_mode": "prob", "num_candidates": 1}, num_prompts=3)
    cli_main(["rollout", "--config", str(recipe), "--rollout_seed", "8"])  # the command line beats the recipe
    assert f"wrote 3 rollout rows to {workspace / 'cli'}/dataset" in capsys.readouterr().out
    dataset = load_from_disk_dataset(workspace / "cli")
    settings = {**STAGE1, "judge_mode": "prob", "num_candidates": 1, "num_prompts": 3, "rollout_seed": 8}
    reference = uninterrupted(workspace, "cli-reference", **settings)
    assert_same_rows(dataset, reference)
    assert [row["status"] for row in dataset] == ["ok", "ok", "invalid_prompt"]


def test_command_line_errors(workspace, capsys):
    recipe = write_recipe(workspace, "cli-errors", **STAGE1)
    with pytest.raises(SystemExit):
        cli_main(["rollout", "--config", str(recipe), "--no_such_option", "1"])
    assert "unrecognized arguments: --no_such_option 1" in capsys.readouterr().err
    missing = workspace / "missing.txt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        cli_main(["rollout", "--config", str(recipe), "--prompts_file", str(missing)])
    missing_model = workspace / "no-model-here"
    with pytest.raises(FileNotFoundError, match=str(missing_model)):
        cli_main(["rollout", "--config", str(recipe), "--model_name_or_path", str(missing_model)])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["stage1"])
    assert exit_info.value.code == 2 and "unknown command 'stage1'" in capsys.readouterr().err
