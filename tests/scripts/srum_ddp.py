"""Train a tiny BAGEL with `SRUMTrainer` for a few steps and write what every process saw (for tests/test_distributed.py).

Run with one process (`python tests/scripts/srum_ddp.py --out DIR`) or several, e.g.

    accelerate launch --config_file recipes/accelerate_configs/cpu_ddp.yaml --num_processes 2 \
        tests/scripts/srum_ddp.py --out DIR --per-device-batch 2

or with FSDP from an accelerate FSDP config (`--fsdp-on-cpu`, see `enable_fsdp_on_cpu`).

`train(...)` does the same inside the calling process (the test runs its 1-process reference that way). Every process
writes `DIR/rank{r}.json` (world size, distributed type, pid, the row ids of each of its micro-batches, under FSDP the
classes of its FSDP units and how many layers are activation-checkpointed, and, on the main process, the trainer's
log history) and `DIR/rank{r}.pt` (its trainable parameters after training, whole even when sharded); with
`--save-model` the trainer also saves the model to `DIR/model`.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor


REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.helpers import tiny_rollout_dataset  # noqa: E402
from trl_srum import SRUMConfig, SRUMTrainer  # noqa: E402
from trl_srum.models.bagel.tiny import tiny_bagel_model  # noqa: E402


class RecordingCollator:
    """Wraps the trainer's collator and records the row ids of every batch this process collates."""

    def __init__(self, collator):
        self.collator = collator
        self.batches: list[list[str]] = []

    def __call__(self, rows):
        batch = self.collator(rows)
        self.batches.append(batch["row_ids"])
        return batch


def enable_fsdp_on_cpu() -> None:
    """Let the FSDP plugin that `accelerate launch` configured (from the config file) wrap the model of CPU processes.

    accelerate turns the plugin on only when the processes drive accelerators: for CPU ones (`use_cpu`, gloo) its
    `AcceleratorState` keeps `MULTI_CPU` and the run silently trains with DDP instead. This flips that one decision
    before the trainer's accelerator is built; the plugin, the wrapping, the activation checkpointing and the saving are
    accelerate's own. The trainer must then keep this state (`accelerator_config={"use_configured_state": True}`).
    """
    state = PartialState(cpu=True)
    if state.distributed_type != DistributedType.MULTI_CPU or os.environ.get("ACCELERATE_USE_FSDP") != "true":
        raise RuntimeError(
            f"--fsdp-on-cpu needs several CPU processes launched with an FSDP config, got {state.distributed_type}"
        )
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def whole_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters under their model names, gathered whole when FSDP shards them (every rank calls it)."""
    parameters = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            value = parameter.full_tensor() if isinstance(parameter, DTensor) else parameter
            parameters[name.replace("_checkpoint_wrapped_module.", "")] = value.detach().cpu().clone()
    return parameters


def train(
    out: Path,
    per_device_batch: int = 2,
    gradient_accumulation: int = 1,
    max_steps: int = 4,
    num_rows: int = 8,
    constraint: str | None = None,
    loss_type: str = "srum",
    latent_source: str = "stored",
    sample_posterior: bool = False,
    trainable_parameters: str = "generation",
    save_model: bool = False,
    fsdp_on_cpu: bool = False,
) -> None:
    """Train and write `out/rank{r}.json` and `out/rank{r}.pt` (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fsdp_on_cpu:
        enable_fsdp_on_cpu()
    # Every process draws the same rollout rows: the generators are seeded per row.
    # The negative-aware loss compares the candidates of a prompt: four per prompt.
    candidates = 4 if loss_type == "nft" else 1
    dataset = tiny_rollout_dataset(tiny_bagel_model(seed=0), num_rows=num_rows, candidates_per_prompt=candidates)
    config = SRUMConfig(
        output_dir=str(out / "trainer"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=gradient_accumulation,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        max_steps=max_steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        text_dropout=0.5,  # exercise the per-row prompt dropout too
        constraint=constraint,
        loss_type=loss_type,
        latent_source=latent_source,
        sample_posterior=sample_posterior,
        trainable_parameters=trainable_parameters,
        dataloader_num_workers=0,
        accelerator_config={"use_configured_state": True} if fsdp_on_cpu else None,
    )
    trainer = SRUMTrainer(tiny_bagel_model(seed=0), config, train_dataset=dataset)
    recorder = RecordingCollator(trainer.data_collator)
    trainer.data_collator = recorder
    trainer.train()

    if save_model:
        trainer.save_model(str(out / "model"))

    accelerator = trainer.accelerator
    rank = accelerator.process_index
    model = accelerator.unwrap_model(trainer.model)
    torch.save(whole_parameters(model), out / f"rank{rank}.pt")
    modules = list(model.modules())
    report = {
        "rank": rank,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "torch_world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "pid": os.getpid(),
        "batches": recorder.batches,
        "fsdp_units": sorted(type(m).__name__.removeprefix("FSDP") for m in modules if isinstance(m, FSDPModule)),
        "checkpointed_modules": sorted(
            type(m._checkpoint_wrapped_module).__name__ for m in modules if isinstance(m, CheckpointWrapper)
        ),
        "log_history": trainer.state.log_history if accelerator.is_main_process else None,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="folder for rank{r}.json and rank{r}.pt")
    parser.add_argument("--per-device-batch", type=int, default=2)
    parser.add_argument("--gradient-accumulation", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--num-rows", type=int, default=8)
    parser.add_argument("--constraint", default=None)
    parser.add_argument("--loss-type", default="srum")
    parser.add_argument("--latent-source", default="stored")
    parser.add_argument("--sample-posterior", action="store_true")
    parser.add_argument("--trainable-parameters", default="generation")
    parser.add_argument("--save-model", action="store_true", help="also save the trained model to OUT/model")
    parser.add_argument("--fsdp-on-cpu", action="store_true", help="wrap with the launcher's FSDP plugin on CPUs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(
        Path(args.out),
        per_device_batch=args.per_device_batch,
        gradient_accumulation=args.gradient_accumulation,
        max_steps=args.max_steps,
        num_rows=args.num_rows,
        constraint=args.constraint,
        loss_type=args.loss_type,
        latent_source=args.latent_source,
        sample_posterior=args.sample_posterior,
        trainable_parameters=args.trainable_parameters,
        save_model=args.save_model,
        fsdp_on_cpu=args.fsdp_on_cpu,
    )


if __name__ == "__main__":
    main()
