"""`trl-srum train`: stage 2 alone, on a rollout dataset (written by `trl-srum rollout`, converted from the released
data, or on the Hub); the weights (the adapter under PEFT) and a model card go to `output_dir`.

    trl-srum train --dataset_name rollouts/dataset --output_dir srum-bagel [--use_peft --lora_r 32] ...
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml -m trl_srum.cli train --config ...
"""

from dataclasses import dataclass, field
from pathlib import Path

from datasets import load_dataset, load_from_disk
from trl import get_peft_config

from ..srum_config import SRUMConfig
from ..srum_trainer import SRUMTrainer
from .utils import SRUMModelConfig, load_model, log_to_console, parse_arguments


@dataclass
class TrainArguments:
    """What `trl-srum train` trains on."""

    dataset_name: str = field(metadata={"help": "A saved rollout dataset (a folder) or a Hub dataset id."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of a Hub dataset."})


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_arguments(
        (TrainArguments, SRUMConfig, SRUMModelConfig), argv, prog="trl-srum train", ignore_other_keys=True
    )
    log_to_console()
    if Path(script_args.dataset_name).is_dir():
        dataset = load_from_disk(script_args.dataset_name)
    else:
        dataset = load_dataset(script_args.dataset_name, split=script_args.dataset_train_split)
    model = load_model(model_args, training_args.device)
    trainer = SRUMTrainer(model, training_args, train_dataset=dataset, peft_config=get_peft_config(model_args))
    resume = training_args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if resume in ("true", "True") else resume)
    trainer.save_model(training_args.output_dir)
    dataset_name = None if Path(script_args.dataset_name).is_dir() else script_args.dataset_name
    trainer.create_model_card(dataset_name=dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
