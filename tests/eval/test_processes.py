"""`trl-srum eval` under `accelerate launch` with two CPU processes: each draws and judges its round-robin share, and
together they write exactly the results of one process."""

import json
import re
import subprocess
import sys

import pytest

from trl_srum.shapes.plugin import SHAPES_MODEL_NAME

from ..helpers import REPO_ROOT, free_port, script_env
from .utils import SETTINGS, without_paths


ACCELERATE_CONFIG = REPO_ROOT / "recipes" / "accelerate_configs" / "cpu_ddp.yaml"


@pytest.mark.slow
def test_two_processes_write_the_results_of_one(reference, tmp_path):
    options = [f"--{key}={json.dumps(value) if isinstance(value, dict) else value}" for key, value in SETTINGS.items()]
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ACCELERATE_CONFIG),
        "--main_process_port", str(free_port()),
        "-m", "trl_srum.cli", "eval", *options, "--model_name_or_path", SHAPES_MODEL_NAME, "--dtype", "float32",
        "--eval_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    result = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    # 24 images: 5 drawing batches (3 + 2) and 4 judging batches (2 + 2)
    drawn = dict(re.findall(r"eval: process (\d) of 2 draws (\d+) of 5 batches", result.stderr))
    judged = dict(re.findall(r"eval: process (\d) of 2 judges (\d+) of 4 batches", result.stderr))
    assert drawn == {"0": "3", "1": "2"} and judged == {"0": "2", "1": "2"}, result.stderr[-5000:]
    assert result.stdout.count("| **overall** |") == 1  # the table is printed by the main process only
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert without_paths(summary) == without_paths(json.loads((reference.eval_dir / "results.json").read_text()))
    rows = [json.loads(line) for line in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()]
    assert rows == reference.rows
