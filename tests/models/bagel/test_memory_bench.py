"""`recipes/benchmarks/bench_memory.py`, run as a user runs it: bad cases are named before any work, and one tiny
case runs end to end on the CPU."""

import json
import re
import subprocess
import sys

import pytest

from ...helpers import REPO_ROOT, script_env


SCRIPT = REPO_ROOT / "recipes" / "benchmarks" / "bench_memory.py"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", *args]
    return subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("case", "message"), [("8-bit:full:512", r"'8-bit:full:512'.*frozen"), ("fp8:32:512", "'fp8:32:512'")]
)
def test_a_bad_case_is_named_before_any_work(case, message):
    result = run_bench("--cases", case)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert "wrote a random" not in result.stdout


@pytest.mark.slow
def test_a_tiny_case_trains_from_a_written_checkpoint():
    result = run_bench("--cases", "bf16:4:32", "--steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    (case,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert case["case"] == "bf16:4:32" and case["peak_allocated_gb"] is None  # no CUDA: nothing measured
    assert case["loss"] is not None and case["loss"] > 0
    assert case["estimate_gb"] > 0
