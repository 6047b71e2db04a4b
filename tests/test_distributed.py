"""Real 2-process CPU runs of `SRUMTrainer` through `accelerate launch` (DDP, and FSDP from the shipped FSDP config),
checked against 1 process on the same global batch.

The trainer keys every random draw on (seed, step, row id) and the loss is a per-process token mean (every tiny image
here has the same number of tokens), so 2 processes x batch B and 1 process x batch 2B must train identically.

`accelerate launch --cpu --num_processes 2` silently starts one process (reference/trl.md §B5): the launch goes
through the MULTI_GPU launcher of `recipes/accelerate_configs/cpu_ddp.yaml`, and `use_cpu=True` makes the ranks join
one gloo group. accelerate also ignores an FSDP config for CPU processes (they silently train with DDP), so the FSDP
run lets the launcher's FSDP plugin in through `tests/scripts/srum_ddp.py: enable_fsdp_on_cpu`.
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
import yaml

from trl_srum.models import load_unified_model
from trl_srum.models.bagel.tiny import tiny_bagel_model

from .helpers import REPO_ROOT, free_port, script_env
from .scripts.srum_ddp import train


SCRIPT = REPO_ROOT / "tests" / "scripts" / "srum_ddp.py"
ACCELERATE_CONFIG = REPO_ROOT / "recipes" / "accelerate_configs" / "cpu_ddp.yaml"
FSDP_CONFIG = REPO_ROOT / "recipes" / "accelerate_configs" / "fsdp_8gpu.yaml"
# The recipe the FSDP config is shipped for (its stage-2 choices are what the FSDP run trains with).
FSDP_RECIPE = REPO_ROOT / "recipes" / "bagel" / "srum" / "config_7b_released.yaml"
PER_DEVICE_BATCH = 2
# Trainer bookkeeping that is not a result of the training.
TIMING_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}


def read_rank(out: Path, rank: int) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((out / f"rank{rank}.json").read_text()), torch.load(out / f"rank{rank}.pt")


def launch_two_processes(config: Path, out: Path, *script_args: str) -> subprocess.Popen:
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        str(SCRIPT),
        "--out",
        str(out),
        *script_args,
    ]
    return subprocess.Popen(
        launch,
        cwd=REPO_ROOT,
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the launcher and its two ranks form one process group, stopped together on timeout
    )


def wait_for(processes: subprocess.Popen, timeout: float = 240) -> str:
    """The launcher's output once it exits successfully; the test fails with it otherwise."""
    try:
        output, _ = processes.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(processes.pid, signal.SIGKILL)
        output, _ = processes.communicate()
        pytest.fail(f"the 2-process run timed out:\n{output.decode()[-4000:]}")
    assert processes.returncode == 0, output.decode()[-4000:]
    return output.decode()


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["srum", "nft"])
def test_two_processes_train_exactly_like_one_with_the_same_global_batch(tmp_path, loss_type):
    two, one = tmp_path / "two", tmp_path / "one"
    two_processes = launch_two_processes(
        ACCELERATE_CONFIG, two, "--per-device-batch", str(PER_DEVICE_BATCH), "--loss-type", loss_type
    )
    # The 1-process reference trains here meanwhile (the launch is mostly interpreter start-up and imports).
    try:
        train(one, per_device_batch=2 * PER_DEVICE_BATCH, loss_type=loss_type)
    finally:
        wait_for(two_processes)

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


def cpu_variant_of_the_shipped_fsdp_config(path: Path) -> dict:
    """Write `fsdp_8gpu.yaml` for 2 CPU processes to `path`; its `fsdp_config` stays exactly as shipped."""
    config = yaml.safe_load(FSDP_CONFIG.read_text())
    assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_version"] == 2, config
    # 2 processes, not 8; float32, so that the run compares with a float32 single process (the shipped bf16 is a
    # GPU setting). `use_cpu` stays false: with it accelerate would choose its one-process launcher.
    config.update(num_processes=2, mixed_precision="no")
    path.write_text(yaml.safe_dump(config))
    return config["fsdp_config"]


@pytest.mark.slow
def test_the_shipped_fsdp_config_trains_two_cpu_processes_like_one(tmp_path):
    fsdp_config = cpu_variant_of_the_shipped_fsdp_config(tmp_path / "fsdp_cpu.yaml")
    recipe = yaml.safe_load(FSDP_RECIPE.read_text())
    stage2 = {
        "constraint": recipe["constraint"],
        "latent_source": recipe["latent_source"],
        "sample_posterior": recipe["sample_posterior"],
        "trainable_parameters": recipe["trainable_parameters"],
    }
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in stage2.items() if key != "sample_posterior"]
    flags += ["--sample-posterior"] if stage2["sample_posterior"] else []
    two, one = tmp_path / "two", tmp_path / "one"
    two_processes = launch_two_processes(
        tmp_path / "fsdp_cpu.yaml",
        two,
        "--per-device-batch",
        str(PER_DEVICE_BATCH),
        "--save-model",
        "--fsdp-on-cpu",
        *flags,
    )
    try:
        train(one, per_device_batch=2 * PER_DEVICE_BATCH, save_model=True, **stage2)
    finally:
        wait_for(two_processes)

    (rank0, params0), (rank1, params1) = read_rank(two, 0), read_rank(two, 1)
    reference, reference_params = read_rank(one, 0)

    # Two processes really ran FSDP, with the shipped wrapping and activation checkpointing.
    layer = fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    layers = sum(type(module).__name__ == layer for module in tiny_bagel_model(seed=0).modules())
    assert layers >= 2
    for report in (rank0, rank1):
        assert report["world_size"] == report["torch_world_size"] == 2
        assert report["distributed_type"] == "DistributedType.FSDP", report["distributed_type"]
        assert report["fsdp_units"].count(layer) == layers, report["fsdp_units"]
        assert report["checkpointed_modules"] == [f"FSDP{layer}"] * layers, report["checkpointed_modules"]
    assert rank0["pid"] != rank1["pid"]
    for whole, first, second in zip(reference["batches"], rank0["batches"], rank1["batches"], strict=True):
        assert sorted(first + second) == sorted(whole)

    # The same losses and the same trained weights as one process on the same global batch.
    losses = [entry["loss"] for entry in rank0["log_history"] if "loss" in entry]
    reference_losses = [entry["loss"] for entry in reference["log_history"] if "loss" in entry]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses), losses
    assert losses == pytest.approx(reference_losses, abs=1e-5, rel=0)
    assert params0.keys() == params1.keys() == reference_params.keys() and len(params0) > 0
    initial = dict(tiny_bagel_model(seed=0).named_parameters())
    moved = 0.0
    for name, value in reference_params.items():
        assert torch.equal(params0[name], params1[name]), f"{name} differs between the ranks"
        torch.testing.assert_close(params0[name], value, rtol=0, atol=1e-5, msg=f"{name}: FSDP != 1 process")
        moved = max(moved, (value - initial[name]).abs().max().item())
    assert moved > 1e-3  # the comparison is not between two untrained models

    # The model saved through FSDP (a full state dict gathered on rank 0) loads and is the one trained.
    saved = load_unified_model(two / "model").state_dict()
    expected = load_unified_model(one / "model").state_dict()
    assert saved.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=1e-5, msg=f"saved {name}: FSDP != 1 process")
    for name, value in params0.items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0, msg=f"saved {name} is not the trained one")
