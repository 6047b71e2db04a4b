"""The evidence of docs/results.md: base, self-SFT and SRUM variants side by side in the shapes world.

    python recipes/shapes/experiments.py --seeds 0 1 2 --output_dir output/shapes-experiments

For every seed it draws one set of rollouts (stage 1 with the recipe's settings; the seed sets the candidates, the
training noise and the evaluation's sampling seeds), trains every variant on those same rollouts from the same base
model, and evaluates each on the held-out prompts with the same sampling seeds, so all numbers of one seed are paired.
The `prob` variant re-judges the same candidates with the token-probability judge; the "oracle rewards" variants
rescore the `text` rollouts with the oracle and the "oracle: correct samples only" variant keeps just the rows the
oracle calls right (upper bounds, not self-rewarding); the "clean renders" control swaps
every image for a render of its prompt (does the model improve at all when fine-tuned on perfect data?). Each seed
writes `<output_dir>/results-seed<N>.json`, so seeds can run as separate processes into one folder (one core each):

    OMP_NUM_THREADS=1 python recipes/shapes/experiments.py --seeds 0 --threads 1 &
    OMP_NUM_THREADS=1 python recipes/shapes/experiments.py --seeds 1 2 --threads 1
    python recipes/shapes/experiments.py --table_only     # the markdown table over every seed file in the folder

The table gives mean ± std over seeds and, per variant, the mean paired change of overall accuracy against the base.
"""

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srum_bagel import evaluate_shapes, parse_arguments  # noqa: E402

from trl_srum import SRUMTrainer  # noqa: E402
from trl_srum.models import load_unified_model  # noqa: E402
from trl_srum.rollout import config_prompts, run_rollouts  # noqa: E402
from trl_srum.shapes import evaluate, parse_prompt, render  # noqa: E402
from trl_srum.shapes.pretrained import DEFAULT_MODEL_DIR  # noqa: E402
from trl_srum.shapes.tasks import oracle_judgement  # noqa: E402


# name -> (SRUMConfig overrides, judge mode of the rollouts, LoRA rank or None for the recipe's full fine-tuning)
VARIANTS: dict[str, tuple[dict, str, int | None]] = {
    "SRUM (official map)": ({}, "text", None),
    "self-SFT (uniform weights)": ({"use_global_reward": False, "use_local_rewards": False}, "text", None),
    "SRUM w/o constraint (λ_c = 0)": ({"lambda_constraint": 0.0}, "text", None),
    "SRUM w/o global": ({"use_global_reward": False}, "text", None),
    "SRUM (signed map)": ({"reward_map_mode": "signed"}, "text", None),
    "SRUM (prob judge)": ({}, "prob", None),
    # The knobs a toy-scale prototype suspected (see docs/results.md): layout-only timesteps, a pull towards the
    # frozen base instead of the self anchor, and a low-rank update.
    "SRUM, t ≥ 0.6 only": ({"timestep_min": 0.6}, "text", None),
    "SRUM, reference constraint": ({"constraint": "reference"}, "text", None),
    "SRUM, LoRA r=16": ({"learning_rate": 1e-3}, "text", 16),
    # Upper bounds, not self-rewarding: the same rollouts scored by the oracle (the labels the judge was taught), to
    # separate what a better judge would buy from what training on the model's own samples costs.
    "oracle rewards: SRUM (official map)": ({}, "oracle", None),
    "oracle rewards: SRUM w/o constraint": ({"lambda_constraint": 0.0}, "oracle", None),
    "oracle rewards: SRUM (official map), lr 2e-5": ({"learning_rate": 2e-5}, "oracle", None),
    "oracle rewards: SRUM w/o constraint, lr 2e-5": (
        {"lambda_constraint": 0.0, "learning_rate": 2e-5},
        "oracle",
        None,
    ),
    # The paper's signed map repels wrong regions: with exact rewards, the one form in which the blur common to right
    # and wrong samples could cancel instead of being learned (it did not; docs/results.md).
    "oracle rewards: SRUM (signed map)": ({"reward_map_mode": "signed"}, "oracle", None),
    "oracle rewards: SRUM (signed map), reference constraint": (
        {"reward_map_mode": "signed", "constraint": "reference"},
        "oracle",
        None,
    ),
    # Layout is decided at high noise, the blur of the samples is learned at low noise.
    "oracle rewards: SRUM (official map), t ≥ 0.8 only": ({"timestep_min": 0.8}, "oracle", None),
    # Not self-rewarding either: the same prompts and budget on clean renders. Whether a model has headroom at all —
    # if perfect data for these prompts does not raise its accuracy, no choice among its own samples will.
    "control: clean renders, uniform weights": (
        {"use_global_reward": False, "use_local_rewards": False},
        "renders",
        None,
    ),
    "self-SFT, lr 2e-5": (
        {"use_global_reward": False, "use_local_rewards": False, "learning_rate": 2e-5},
        "text",
        None,
    ),
    # The most a perfect judge can select: only the samples the oracle calls right, at the gentlest rate tried.
    "oracle: correct samples only, uniform weights, lr 2e-5": (
        {"use_global_reward": False, "use_local_rewards": False, "learning_rate": 2e-5},
        "correct",
        None,
    ),
    "control: clean renders, uniform weights, lr 2e-5": (
        {"use_global_reward": False, "use_local_rewards": False, "learning_rate": 2e-5},
        "renders",
        None,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", default="output/shapes-experiments")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="a subset of the variant names")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 when seeds run side by side)")
    parser.add_argument("--table_only", action="store_true", help="print the table of the seed files and stop")
    own, recipe_argv = parser.parse_known_args()
    output = Path(own.output_dir)
    if own.table_only:
        print_table(output)
        return
    if own.threads:
        torch.set_num_threads(own.threads)
    sys.argv = [sys.argv[0], *recipe_argv]  # everything else is a recipe key (see config_shapes.yaml)
    script_args, base_training_args, base_rollout_config, model_args = parse_arguments()
    logging.basicConfig(level=logging.WARNING)
    model_path = model_args.model_name_or_path or DEFAULT_MODEL_DIR
    unknown = [name for name in own.variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    for seed in own.seeds:
        # Variants run later for the same seed are added to its file (the base and the rollouts are the same).
        seed_file = output / f"results-seed{seed}.json"
        results: dict[str, dict] = json.loads(seed_file.read_text()) if seed_file.is_file() else {}
        script_args.eval_seeds = [100 * seed, 100 * seed + 1]
        base = load_unified_model(model_path, dtype=torch.float32).eval()
        before, understanding, _ = evaluate_shapes(base, script_args, base_rollout_config, "base")
        results["base"] = {"accuracy": before, "understanding": understanding}
        rollouts = {}
        for name in own.variants:
            overrides, judge_mode, lora_rank = VARIANTS[name]
            if judge_mode in DERIVED_FROM_TEXT and judge_mode not in rollouts:
                if "text" not in rollouts:
                    rollouts["text"] = draw_rollouts(base, base_rollout_config, seed, "text", output)
                rollouts[judge_mode] = DERIVED_FROM_TEXT[judge_mode](rollouts["text"], base)
            if judge_mode not in rollouts:
                rollouts[judge_mode] = draw_rollouts(base, base_rollout_config, seed, judge_mode, output)
            training_args = copy.deepcopy(base_training_args)
            training_args.seed = seed
            training_args.output_dir = str(output / f"seed-{seed}" / f"variant-{list(VARIANTS).index(name)}")
            for key, value in overrides.items():
                setattr(training_args, key, value)
            started = time.perf_counter()
            model = load_unified_model(model_path, dtype=torch.float32)
            peft_config = None if lora_rank is None else LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank)
            trainer = SRUMTrainer(model, training_args, train_dataset=rollouts[judge_mode], peft_config=peft_config)
            trainer.train()
            after, understanding, _ = evaluate_shapes(trainer.model.eval(), script_args, base_rollout_config, name)
            results[name] = {
                "accuracy": after,
                "understanding": understanding,
                "minutes": (time.perf_counter() - started) / 60,
            }
            output.mkdir(parents=True, exist_ok=True)
            seed_file.write_text(json.dumps(results, indent=2))
    print_table(output)


def draw_rollouts(model, base_config, seed: int, judge_mode: str, output: Path) -> Dataset:
    """Stage 1 with the recipe's settings for one seed and judge (resumed from its folder when already drawn)."""
    rollout_config = copy.deepcopy(base_config)
    rollout_config.rollout_seed = seed
    rollout_config.judge_mode = judge_mode
    rollout_config.rollout_dir = str(output / f"seed-{seed}" / f"rollouts-{judge_mode}")
    return run_rollouts(model, config_prompts(rollout_config), rollout_config)


def rescored_by_oracle(rollouts: Dataset, model) -> Dataset:
    """The same images and regions, with the judge's scores replaced by the oracle's (`oracle_judgement`)."""

    def rescore(row: dict) -> dict:
        boxes = [region["bbox"] for region in row["regions"]]
        global_score, region_scores = oracle_judgement(row["image"], parse_prompt(row["prompt"]), boxes)
        regions = [dict(region, score=score) for region, score in zip(row["regions"], region_scores, strict=True)]
        return {"global_score": global_score, "regions": regions}

    return rollouts.map(rescore, desc="oracle scores")


def oracle_correct(rollouts: Dataset, model) -> Dataset:
    """Only the rows whose image the oracle judges right for its prompt."""
    return rollouts.filter(lambda row: evaluate(row["image"], parse_prompt(row["prompt"]))["correct"], desc="oracle")


def replaced_by_renders(rollouts: Dataset, model) -> Dataset:
    """The same rows with each image and its latents replaced by a clean render of the row's prompt."""

    def rerender(row: dict) -> dict:
        image = render(parse_prompt(row["prompt"]), size=row["image"].width, seed=row["seed"])
        return {"image": image, "latents": model.encode_images([image])[0].tolist()}

    return rollouts.map(rerender, desc="clean renders")


# Rollout sets computed from the `text` rollouts of the same seed rather than drawn: judge mode -> (rollouts, model).
DERIVED_FROM_TEXT = {"oracle": rescored_by_oracle, "correct": oracle_correct, "renders": replaced_by_renders}


def print_table(output: Path) -> None:
    """Mean ± std over the seed files of `output`, and the mean paired change of overall accuracy vs the base."""
    files = sorted(output.glob("results-seed*.json"))
    if not files:
        raise FileNotFoundError(f"no results-seed*.json in {output}")
    runs = [json.loads(f.read_text()) for f in files]
    categories = list(runs[0]["base"]["accuracy"])
    names = [name for name in ["base", *VARIANTS] if any(name in run for run in runs)]
    print(f"\n{len(runs)} seed(s): {', '.join(f.stem.removeprefix('results-') for f in files)}")
    print(f"\n| variant | {' | '.join(categories)} | Δ overall vs base | understanding |")
    print(f"|---|{'---|' * len(categories)}---|---|")
    for name in names:
        paired = [run for run in runs if name in run]
        cells = []
        for category in categories:
            values = [100 * run[name]["accuracy"][category] for run in paired]
            cells.append(f"{np.mean(values):.1f} ± {np.std(values):.1f}")
        change = [100 * (run[name]["accuracy"]["overall"] - run["base"]["accuracy"]["overall"]) for run in paired]
        understanding = [100 * run[name]["understanding"] for run in paired]
        cells.append("–" if name == "base" else f"{np.mean(change):+.1f} ± {np.std(change):.1f}")
        cells.append(f"{np.mean(understanding):.1f} ± {np.std(understanding):.1f}")
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
