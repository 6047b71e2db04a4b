"""`trl-srum run`: SRUM end to end — evaluate, stage 1 and stage 2 in rounds (`trl_srum.pipeline`), evaluate again,
save the weights and the model card. `accelerate launch recipes/srum_bagel.py` is this command on the shapes-world
recipe; the 7B recipes name a YAML:

    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml -m trl_srum.cli run \\
        --config recipes/bagel/srum/config_7b_lora_4bit.yaml --model_name_or_path ByteDance-Seed/BAGEL-7B-MoT

The evaluation before and after (`eval_protocol`, e.g. `shapes`, `compbench-vlm`, `geneval`; see docs/evaluation.md)
draws the same prompts from the same seeds both times, so the two runs pair up: the command prints each category
before and after, with the paired change and its bootstrap interval, and writes `eval_results.json` and a before /
after image grid (`samples/before_after.png`) to `output_dir`.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from PIL import Image, ImageDraw, ImageOps
from trl import get_peft_config

from ..eval import EvalConfig, EvalResults, compare_runs, evaluate_model, log_results
from ..eval.protocols import build_protocol
from ..pipeline import RoundsConfig, SRUMPipeline
from ..rollout import RolloutConfig, config_prompts
from ..rollout.gallery import image_grid
from ..srum_config import SRUMConfig
from .utils import SRUMModelConfig, load_model, log_to_console, parse_arguments


@dataclass
class RunArguments:
    """The evaluation around the run, and the name of the data on the model card."""

    dataset_name: str | None = field(default=None, metadata={"help": "The rollout data's Hub name, for the card."})
    eval_protocol: str | None = field(
        default=None, metadata={"help": "Evaluate before and after training: 'shapes', 'compbench-vlm', 'geneval'."}
    )
    eval_prompts: str | None = field(default=None, metadata={"help": "Prompts of the evaluation (see EvalConfig)."})
    eval_max_prompts: int | None = field(default=None, metadata={"help": "Evaluate only the first N prompts."})
    eval_prompts_per_category: int = field(
        default=16, metadata={"help": "Prompts per category of a protocol's own set (shapes)."}
    )
    eval_num_images: int = field(default=2, metadata={"help": "Images per evaluation prompt."})
    eval_seed: int = field(default=0, metadata={"help": "Base seed of the evaluation images."})
    eval_judge_model: str | None = field(default=None, metadata={"help": "'compbench-vlm': the VLM judge."})
    eval_every_round: bool = field(default=False, metadata={"help": "Also evaluate (and log) after every round."})


def evaluation_config(run_args: RunArguments, rollout_config: RolloutConfig, eval_dir: Path) -> EvalConfig:
    """The evaluation of a run: its own prompts, the rollouts' image size, planning and sampler settings."""
    settings: dict[str, Any] = {
        "eval_dir": str(eval_dir),
        "protocol": run_args.eval_protocol,
        "prompts": run_args.eval_prompts,
        "max_prompts": run_args.eval_max_prompts,
        "prompts_per_category": run_args.eval_prompts_per_category,
        "num_images": run_args.eval_num_images,
        "eval_seed": run_args.eval_seed,
        "image_width": rollout_config.image_width,
        "image_height": rollout_config.image_height,
        "think": rollout_config.think,
        "generation_kwargs": rollout_config.generation_kwargs,
        "generation_batch_size": rollout_config.rollout_batch_size,
    }
    if run_args.eval_judge_model is not None:
        settings["judge_model"] = run_args.eval_judge_model
    return EvalConfig(**settings)


def before_after_grid(before: EvalResults, after: EvalResults, count: int = 16, side: int = 96) -> Image.Image:
    """The first image of `count` prompts spread over the evaluation, before (top row) and after (bottom row), each
    with its score (for `shapes`, the oracle's verdict: 1 right, 0 wrong) and its prompt underneath."""
    firsts = [i for i, row in enumerate(before.rows) if row["index"] == 0]
    chosen = [firsts[int(j)] for j in range(0, len(firsts), max(1, len(firsts) // count))][:count]

    def tile(results: EvalResults, index: int) -> Image.Image:
        row = results.rows[index]
        with Image.open(results.images_dir / row["image"]) as image:
            canvas = ImageOps.pad(image.convert("RGB"), (side, side), color="white")
        framed = ImageOps.expand(canvas, border=(0, 0, 0, 24), fill="white")
        draw = ImageDraw.Draw(framed)
        score = "missing" if row["score"] is None else f"{row['score']:.3g}"
        draw.text((2, side + 1), score, fill=(0, 130, 0) if row["score"] else (200, 0, 0))
        draw.text((2, side + 12), row["prompt"][: side // 6], fill="black")
        return framed

    return image_grid([[tile(before, i) for i in chosen], [tile(after, i) for i in chosen]])


def report(before: EvalResults, after: EvalResults, output_dir: Path) -> str:
    """`eval_results.json`, `samples/before_after.png` and the printed table of the paired change."""
    comparison = compare_runs(before.eval_dir, after.eval_dir)
    differences = {"overall": comparison.overall, **comparison.categories}
    results = {
        "protocol": comparison.protocol,
        "before": {name: d.a for name, d in differences.items()},
        "after": {name: d.b for name, d in differences.items()},
        "paired_change": {name: {"change": d.difference, "ci95": [d.low, d.high]} for name, d in differences.items()},
        "image_pairs": comparison.images,
        "notes": comparison.notes,
        "before_dir": str(before.eval_dir),
        "after_dir": str(after.eval_dir),
    }
    (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
    (output_dir / "samples").mkdir(parents=True, exist_ok=True)
    before_after_grid(before, after).save(output_dir / "samples" / "before_after.png")
    lines = [f"\n{'category':<18}{'before':>10}{'after':>10}{'change':>10}   95% interval (paired bootstrap)"]
    for name, d in differences.items():
        lines.append(f"{name:<18}{d.a:>10.3f}{d.b:>10.3f}{d.difference:>+10.3f}   [{d.low:+.3f}, {d.high:+.3f}]")
    lines += [f"note: {note}" for note in comparison.notes]
    lines.append(f"\nwrote {output_dir / 'eval_results.json'} and {output_dir / 'samples' / 'before_after.png'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, default_config: str | Path | None = None) -> None:
    run_args, rounds, training_args, rollout_config, model_args = parse_arguments(
        (RunArguments, RoundsConfig, SRUMConfig, RolloutConfig, SRUMModelConfig),
        argv,
        prog="trl-srum run",
        default_config=default_config,
    )
    log_to_console()
    state = PartialState(cpu=training_args.use_cpu)
    if run_args.eval_protocol and state.distributed_type == "FSDP":
        raise ValueError(
            "eval_protocol under FSDP: the evaluation draws with the sharded model on processes that draw different "
            "numbers of batches; evaluate the saved model afterwards with `trl-srum eval` instead"
        )
    output_dir = Path(training_args.output_dir)
    prompts = config_prompts(rollout_config) if rounds.rollout_dataset is None else []
    model = load_model(model_args, state.device)

    evaluation = protocol = None
    if run_args.eval_protocol:
        evaluation = evaluation_config(run_args, rollout_config, output_dir / "eval" / "base")
        protocol = build_protocol(evaluation)  # its judge models load once, for every evaluation of the run
        before = evaluate_model(model, evaluation, protocol=protocol, state=state)

    pipeline = SRUMPipeline(
        model,
        prompts,
        args=training_args,
        rollout_config=rollout_config,
        rounds=rounds,
        peft_config=get_peft_config(model_args),
    )
    if evaluation is not None and run_args.eval_every_round:

        def evaluate_round(round_index: int) -> None:
            config = dataclasses.replace(evaluation, eval_dir=str(output_dir / "eval" / f"round-{round_index}"))
            results = evaluate_model(pipeline.model, config, protocol=protocol, state=state)
            log_results(results, pipeline.trackers, pipeline.steps)

        pipeline.round_end_hooks.append(evaluate_round)
    model = pipeline.run(resume_from_checkpoint=training_args.resume_from_checkpoint)

    if evaluation is not None:
        after_config = dataclasses.replace(evaluation, eval_dir=str(output_dir / "eval" / "final"))
        after = evaluate_model(model, after_config, protocol=protocol, state=state)
        if state.is_main_process:
            print(report(before, after, output_dir))
    pipeline.save(dataset_name=run_args.dataset_name)
