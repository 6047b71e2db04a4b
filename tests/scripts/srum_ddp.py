"""Train a tiny BAGEL with `SRUMTrainer` for a few steps and write what every process saw (for tests/test_distributed.py).

Run with one process (`python tests/scripts/srum_ddp.py --out DIR`) or several, e.g.

    accelerate launch --config_file recipes/accelerate_configs/cpu_ddp.yaml --num_processes 2 \
        tests/scripts/srum_ddp.py --out DIR --per-device-batch 2

`train(...)` does the same inside the calling process (the test runs its 1-process reference that way). Every process
writes `DIR/rank{r}.json` (world size, distributed type, pid, the row ids of each of its micro-batches,
and, on the main process, the trainer's log history) and `DIR/rank{r}.pt` (its trainable parameters after training).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch


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


def train(
    out: Path,
    per_device_batch: int = 2,
    gradient_accumulation: int = 1,
    max_steps: int = 4,
    num_rows: int = 8,
    constraint: str = "self",
) -> None:
    """Train and write `out/rank{r}.json` and `out/rank{r}.pt` (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Every process draws the same rollout rows: the generators are seeded per row.
    dataset = tiny_rollout_dataset(tiny_bagel_model(seed=0), num_rows=num_rows)
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
        dataloader_num_workers=0,
    )
    trainer = SRUMTrainer(tiny_bagel_model(seed=0), config, train_dataset=dataset)
    recorder = RecordingCollator(trainer.data_collator)
    trainer.data_collator = recorder
    trainer.train()

    accelerator = trainer.accelerator
    rank = accelerator.process_index
    model = accelerator.unwrap_model(trainer.model)
    trainable = {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
    torch.save(trainable, out / f"rank{rank}.pt")
    report = {
        "rank": rank,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "torch_world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "pid": os.getpid(),
        "batches": recorder.batches,
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
    parser.add_argument("--constraint", default="self")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(
        Path(args.out),
        per_device_batch=args.per_device_batch,
        gradient_accumulation=args.gradient_accumulation,
        max_steps=args.max_steps,
        num_rows=args.num_rows,
        constraint=args.constraint,
    )


if __name__ == "__main__":
    main()
