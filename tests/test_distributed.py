"""A real 2-process CPU run of `SRUMTrainer` through `accelerate launch`, checked against 1 process on the same global
batch.

The trainer keys every random draw on (seed, step, row id) and the loss is a per-process token mean (every tiny image
here has the same number of tokens), so 2 processes x batch B and 1 process x batch 2B must train identically.

`accelerate launch --cpu --num_processes 2` silently starts one process (reference/trl.md §B5): the launch goes
through the MULTI_GPU launcher of `recipes/accelerate_configs/cpu_ddp.yaml`, and `use_cpu=True` makes the ranks join
one gloo group.
"""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_srum.models.bagel.tiny import tiny_bagel_model

from .helpers import REPO_ROOT, free_port, script_env
from .scripts.srum_ddp import train


SCRIPT = REPO_ROOT / "tests" / "scripts" / "srum_ddp.py"
ACCELERATE_CONFIG = REPO_ROOT / "recipes" / "accelerate_configs" / "cpu_ddp.yaml"
PER_DEVICE_BATCH = 2
# Trainer bookkeeping that is not a result of the training.
TIMING_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}


def read_rank(out: Path, rank: int) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((out / f"rank{rank}.json").read_text()), torch.load(out / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_processes_train_exactly_like_one_with_the_same_global_batch(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ACCELERATE_CONFIG),
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        str(SCRIPT),
        "--out",
        str(two),
        "--per-device-batch",
        str(PER_DEVICE_BATCH),
    ]
    two_processes = subprocess.Popen(
        launch,
        cwd=REPO_ROOT,
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the launcher and its two ranks form one process group, stopped together on timeout
    )
    # The 1-process reference trains here meanwhile (the launch is mostly interpreter start-up and imports).
    try:
        train(one, per_device_batch=2 * PER_DEVICE_BATCH)
    finally:
        try:
            output, _ = two_processes.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(two_processes.pid, signal.SIGKILL)
            output, _ = two_processes.communicate()
            pytest.fail(f"the 2-process run timed out:\n{output.decode()[-4000:]}")
    assert two_processes.returncode == 0, output.decode()[-4000:]

    (rank0, params0), (rank1, params1) = read_rank(two, 0), read_rank(two, 1)
    reference, reference_params = read_rank(one, 0)

    # Two processes really ran, in one gloo group.
    assert not (two / "rank2.json").exists()
    assert rank0["pid"] != rank1["pid"]
    for report in (rank0, rank1):
        assert report["world_size"] == report["torch_world_size"] == 2
        assert report["distributed_type"] == "DistributedType.MULTI_CPU"
    assert reference["world_size"] == 1 and reference["distributed_type"] == "DistributedType.NO"

    # The ranks split each global batch between them, and the global batches are those of the single process.
    assert len(reference["batches"]) == len(rank0["batches"]) == len(rank1["batches"]) == 4
    for whole, first, second in zip(reference["batches"], rank0["batches"], rank1["batches"], strict=True):
        assert len(first) == len(second) == PER_DEVICE_BATCH
        assert not set(first) & set(second)
        assert sorted(first + second) == sorted(whole)

    # DDP kept the replicas identical, and they match the single-process result.
    assert params0.keys() == params1.keys() == reference_params.keys() and len(params0) > 0
    initial = dict(tiny_bagel_model(seed=0).named_parameters())
    moved = 0.0
    for name, value in reference_params.items():
        assert torch.equal(params0[name], params1[name]), f"{name} differs between the ranks"
        torch.testing.assert_close(params0[name], value, rtol=0, atol=1e-5, msg=f"{name}: 2 processes != 1")
        moved = max(moved, (value - initial[name]).abs().max().item())
    assert moved > 1e-3  # the comparison is not between two untrained models

    # Every logged value (losses, reward statistics, reward-map counts, gradient norm) agrees.
    history, reference_history = rank0["log_history"], reference["log_history"]
    assert len(history) == len(reference_history) == 5  # 4 steps and the training summary
    assert [entry["loss"] for entry in history[:4]] == pytest.approx(
        [entry["loss"] for entry in reference_history[:4]], abs=1e-5, rel=0
    )
    for entry, expected in zip(history, reference_history, strict=True):
        assert entry.keys() == expected.keys()
        for key, value in expected.items():
            if key in TIMING_KEYS:
                continue
            assert math.isfinite(value), key
            assert entry[key] == pytest.approx(value, abs=1e-5, rel=1e-5), f"step {expected.get('step')}: {key}"
