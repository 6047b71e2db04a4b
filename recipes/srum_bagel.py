"""SRUM on BAGEL, end to end: stage 1 (self-judged rollouts), stage 2 (SRUMTrainer), evaluation.

With no arguments it runs the shapes-world demo on the tiny BAGEL that ships with trl-srum (CPU, a few minutes):

    accelerate launch recipes/srum_bagel.py

The paper's run on BAGEL-7B-MoT (download the official folder first; see docs/recipes.md):

    accelerate launch --config_file recipes/accelerate_configs/fsdp_8gpu.yaml recipes/srum_bagel.py \\
        --config recipes/bagel/srum/config_7b_released.yaml --model_name_or_path /path/to/BAGEL-7B-MoT

or on one 24 GB GPU with a 4-bit base and LoRA:

    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/srum_bagel.py \\
        --config recipes/bagel/srum/config_7b_lora_4bit.yaml --model_name_or_path /path/to/BAGEL-7B-MoT
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import load_from_disk
from transformers import PreTrainedModel
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from trl_srum import SRUMConfig, SRUMTrainer
from trl_srum.models import load_unified_model
from trl_srum.rollout import RolloutConfig, config_prompts, load_prompts, run_rollouts
from trl_srum.rollout.gallery import image_grid


logger = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).parent / "bagel" / "srum" / "config_shapes.yaml"


@dataclass
class SRUMScriptArguments(ScriptArguments):
    """Arguments of the SRUM recipe beyond the trainer, stage-1 and model settings."""

    rollout_dataset: str | None = field(
        default=None,
        metadata={"help": "Train on this saved rollout dataset (e.g. converted official data) instead of stage 1."},
    )
    num_rounds: int = field(
        default=1, metadata={"help": "Rollouts -> training rounds; later rounds roll out with the updated model."}
    )
    eval_shapes_per_category: int = field(
        default=0,
        metadata={"help": "Held-out shapes-world prompts per category to evaluate before and after (0: none)."},
    )
    eval_seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Sampling seeds of the evaluation."})
    eval_prompts_file: str | None = field(
        default=None, metadata={"help": "Other prompts to draw before and after training, for a visual comparison."}
    )
    eval_num_prompts: int = field(default=8, metadata={"help": "How many of those prompts to draw."})


@dataclass
class SRUMModelConfig(ModelConfig):
    """TRL's model arguments with image-model defaults: no causal-LM LoRA task type."""

    lora_task_type: str | None = field(
        default=None, metadata={"help": "PEFT task type; None for image generators (not a causal LM)."}
    )


def parse_arguments(
    default_config: Path | None = DEFAULT_CONFIG,
) -> tuple[SRUMScriptArguments, SRUMConfig, RolloutConfig, SRUMModelConfig]:
    argv = sys.argv[1:]
    if "--config" not in argv and default_config is not None:
        argv = ["--config", str(default_config), *argv]
    parser = TrlParser((SRUMScriptArguments, SRUMConfig, RolloutConfig, SRUMModelConfig))
    return parser.parse_args_and_config(argv)


def evaluate_shapes(model, script_args, rollout_config, label: str) -> tuple[dict, dict, list]:
    """Oracle accuracy on held-out prompts and the judge's understanding accuracy, with fixed seeds."""
    from trl_srum.shapes.evaluation import evaluation_specs, generation_accuracy, understanding_accuracy

    specs = evaluation_specs(script_args.eval_shapes_per_category, split="heldout")
    logger.info(f"evaluating the {label} model on {sum(map(len, specs.values()))} held-out prompts")
    table, samples = generation_accuracy(
        model,
        specs,
        seeds=script_args.eval_seeds,
        image_size=rollout_config.image_width,
        **(rollout_config.generation_kwargs or {}),
    )
    scenes = [spec for group in specs.values() for spec in group]
    understanding = understanding_accuracy(model, scenes, style=rollout_config.judge_style)
    return {k: v["accuracy"] for k, v in table.items()}, understanding, samples


@torch.no_grad()
def draw(model, prompts: list[str], rollout_config: RolloutConfig) -> list:
    """One image per prompt from fixed seeds (the same before and after training)."""
    return [
        generated.image
        for generated in model.generate_images(
            prompts,
            generators=[torch.Generator().manual_seed(index) for index in range(len(prompts))],
            image_size=rollout_config.image_size,
            **(rollout_config.generation_kwargs or {}),
        )
    ]


def print_table(before: dict, after: dict) -> None:
    print(f"\n{'category':<16}{'before':>10}{'after':>10}{'change':>10}")
    for category in before:
        print(
            f"{category:<16}{before[category]:>10.3f}{after[category]:>10.3f}{after[category] - before[category]:>+10.3f}"
        )


def load_model(model_args: SRUMModelConfig, device: torch.device) -> PreTrainedModel:
    """The model the recipe trains (the shipped shapes-world BAGEL unless a checkpoint is named), on `device`.

    Stage 1 samples and judges before any trainer exists, so the model must already sit on this process's
    accelerator: the trainer would only move it at stage 2.
    """
    if model_args.model_name_or_path is None:
        from trl_srum.shapes.pretrained import DEFAULT_MODEL_DIR

        model_args.model_name_or_path = str(DEFAULT_MODEL_DIR)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = load_unified_model(
        model_args.model_name_or_path, device, dtype=dtype, quantization_config=get_quantization_config(model_args)
    ).eval()
    logger.info(f"loaded {model_args.model_name_or_path} on {model.device} ({model.dtype})")
    return model


class OncePerMessage(logging.Filter):
    """Let each distinct message through once. bitsandbytes logs a dtype-cast warning on every 8-bit matmul whose
    input is not float16 (bf16 training with `load_in_8bit`): millions of identical lines in a 7B run."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def main(default_config: Path | None = DEFAULT_CONFIG) -> None:
    script_args, training_args, rollout_config, model_args = parse_arguments(default_config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(OncePerMessage())
    state = PartialState(cpu=training_args.use_cpu)
    output_dir = Path(training_args.output_dir)

    model = load_model(model_args, state.device)

    # ---- evaluation before training
    shapes_eval = script_args.eval_shapes_per_category > 0
    if shapes_eval:
        before, understanding_before, samples_before = evaluate_shapes(model, script_args, rollout_config, "base")
    visual_prompts = []
    if script_args.eval_prompts_file:
        visual_prompts = [
            r.prompt for r in load_prompts(script_args.eval_prompts_file)[: script_args.eval_num_prompts]
        ]
        visual_before = draw(model, visual_prompts, rollout_config)

    # ---- stage 1 and stage 2, possibly in rounds
    prompts = None
    if script_args.rollout_dataset is None:
        prompts = config_prompts(rollout_config)
    base_rollout_dir = Path(rollout_config.rollout_dir)
    for round_index in range(script_args.num_rounds):
        if script_args.rollout_dataset is not None:
            dataset = load_from_disk(script_args.rollout_dataset)
        else:
            rollout_config.rollout_dir = str(base_rollout_dir / f"round-{round_index}")
            dataset = run_rollouts(model, prompts, rollout_config)
        trainer = SRUMTrainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            peft_config=get_peft_config(model_args) if round_index == 0 else None,
        )
        trainer.train()
        model = trainer.model
        if round_index + 1 < script_args.num_rounds:
            # The next round rolls out with the updated generator; adapters are folded in first.
            model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
            training_args.output_dir = str(output_dir / f"round-{round_index + 1}")
        model.eval()

    trainer.save_model(str(output_dir))

    # ---- evaluation after training, the image grid, the card
    generator_model = trainer.accelerator.unwrap_model(model)
    if shapes_eval and state.is_main_process:
        after, understanding_after, samples_after = evaluate_shapes(
            generator_model, script_args, rollout_config, "trained"
        )
        results = {
            "before": before,
            "after": after,
            "understanding_before": understanding_before,
            "understanding_after": understanding_after,
        }
        (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
        shown = list(range(0, len(samples_before), max(1, len(samples_before) // 16)))[:16]
        (output_dir / "samples").mkdir(exist_ok=True)
        image_grid([[samples_before[i].image for i in shown], [samples_after[i].image for i in shown]]).save(
            output_dir / "samples" / "before_after.png"
        )
        print_table(before, after)
        print(f"{'understanding':<16}{understanding_before:>10.3f}{understanding_after:>10.3f}")
        print(f"\nwrote {output_dir / 'eval_results.json'} and {output_dir / 'samples' / 'before_after.png'}")
    if visual_prompts and state.is_main_process:
        (output_dir / "samples").mkdir(exist_ok=True)
        image_grid([visual_before, draw(generator_model, visual_prompts, rollout_config)]).save(
            output_dir / "samples" / "prompts_before_after.png"
        )
    trainer.create_model_card(dataset_name=script_args.dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    main()
