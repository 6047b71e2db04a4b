"""The evidence of docs/results.md: base, self-SFT and SRUM variants side by side in the shapes world.

    python recipes/shapes/experiments.py --seeds 0 1 2 --output_dir output/shapes-experiments [--variants ...]

For every seed it measures the base model, then trains every variant from that same base and measures it again on
the held-out prompts with the same sampling seeds, so all numbers of one seed are paired. Two kinds of variant:

- offline (one round, as the paper): one set of rollouts per seed and judge is drawn with the base model and every
  offline variant trains on it. The "oracle rewards" variants rescore the `text` rollouts with the oracle and the
  "oracle: correct samples only" variant keeps just the rows the oracle calls right (upper bounds, not self-rewarding);
  the "clean renders" control swaps every image for a render of its prompt (does the model improve at all when
  fine-tuned on perfect data?).
- online (`trl_srum.pipeline`, with the recipe's rounds: `--num_rounds`, `--prompts_per_round`, `--num_candidates`):
  every round draws fresh candidates from the current model, judges them (with the model itself, or with the oracle
  for the upper bound), and trains one pass on them.

Each seed writes `<output_dir>/results-seed<N>.json`, so seeds can run as separate processes into one folder (one
core each):

    OMP_NUM_THREADS=1 python recipes/shapes/experiments.py --seeds 0 --threads 1 &
    OMP_NUM_THREADS=1 python recipes/shapes/experiments.py --seeds 1 2 --threads 1
    python recipes/shapes/experiments.py --table_only     # the markdown table over every seed file in the folder

The table gives mean ± std over seeds and, per variant, the mean paired change of overall accuracy against the base.
Any other option is a key of the recipe (`recipes/bagel/srum/config_shapes.yaml`), e.g. `--learning_rate 2e-5`.
"""

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig

from trl_srum import SRUMTrainer
from trl_srum.models import load_unified_model
from trl_srum.pipeline import RoundsConfig, SRUMPipeline
from trl_srum.rollout import RolloutConfig, config_prompts, run_rollouts
from trl_srum.scripts.run import RunArguments
from trl_srum.scripts.utils import SRUMModelConfig, parse_arguments
from trl_srum.shapes.experiments import (
    accuracy_change,
    measure,
    oracle_correct,
    replaced_by_renders,
    rescored_by_oracle,
)
from trl_srum.shapes.judge import OracleJudge
from trl_srum.shapes.pretrained import DEFAULT_MODEL_DIR
from trl_srum.srum_config import SRUMConfig


DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "bagel" / "srum" / "config_shapes.yaml"


@dataclass(frozen=True)
class Variant:
    """One way of training from the base model."""

    overrides: dict[str, Any] = field(default_factory=dict)  # SRUMConfig fields
    judge: str = "text"  # stage 1's judge: the model's own ("text", "prob") or "oracle"
    derived: str | None = None  # offline rollouts derived from the `text` ones: "correct" or "renders"
    lora_rank: int | None = None
    online: bool = False  # rounds of fresh rollouts (trl_srum.pipeline) with the recipe's RoundsConfig


UNIFORM = {"use_global_reward": False, "use_local_rewards": False}
NFT = {"loss_type": "nft", "constraint": "none"}
ONLINE = {"online": True}

VARIANTS: dict[str, Variant] = {
    "SRUM (official map)": Variant(),
    "self-SFT (uniform weights)": Variant(UNIFORM),
    "SRUM w/o constraint (λ_c = 0)": Variant({"lambda_constraint": 0.0}),
    "SRUM w/o global": Variant({"use_global_reward": False}),
    "SRUM (signed map)": Variant({"reward_map_mode": "signed"}),
    "SRUM (prob judge)": Variant(judge="prob"),
    # The knobs a toy-scale prototype suspected (see docs/results.md): layout-only timesteps, a pull towards the
    # frozen base instead of the self anchor, and a low-rank update.
    "SRUM, t ≥ 0.6 only": Variant({"timestep_min": 0.6}),
    "SRUM, reference constraint": Variant({"constraint": "reference"}),
    "SRUM, LoRA r=16": Variant({"learning_rate": 1e-3}, lora_rank=16),
    # Upper bounds, not self-rewarding: the same rollouts scored by the oracle (the labels the judge was taught), to
    # separate what a better judge would buy from what training on the model's own samples costs.
    "oracle rewards: SRUM (official map)": Variant(judge="oracle"),
    "oracle rewards: SRUM w/o constraint": Variant({"lambda_constraint": 0.0}, judge="oracle"),
    "oracle rewards: SRUM (official map), lr 2e-5": Variant({"learning_rate": 2e-5}, judge="oracle"),
    "oracle rewards: SRUM w/o constraint, lr 2e-5": Variant(
        {"lambda_constraint": 0.0, "learning_rate": 2e-5}, judge="oracle"
    ),
    # The paper's signed map repels wrong regions: with exact rewards, the one form in which the blur common to right
    # and wrong samples could cancel instead of being learned (it did not; docs/results.md).
    "oracle rewards: SRUM (signed map)": Variant({"reward_map_mode": "signed"}, judge="oracle"),
    "oracle rewards: SRUM (signed map), reference constraint": Variant(
        {"reward_map_mode": "signed", "constraint": "reference"}, judge="oracle"
    ),
    # Layout is decided at high noise, the blur of the samples is learned at low noise.
    "oracle rewards: SRUM (official map), t ≥ 0.8 only": Variant({"timestep_min": 0.8}, judge="oracle"),
    # Not self-rewarding either: the same prompts and budget on clean renders. Whether a model has headroom at all —
    # if perfect data for these prompts does not raise its accuracy, no choice among its own samples will.
    "control: clean renders, uniform weights": Variant(UNIFORM, derived="renders"),
    "self-SFT, lr 2e-5": Variant({**UNIFORM, "learning_rate": 2e-5}),
    # The most a perfect judge can select: only the samples the oracle calls right, at the gentlest rate tried.
    "oracle: correct samples only, uniform weights, lr 2e-5": Variant(
        {**UNIFORM, "learning_rate": 2e-5}, derived="correct"
    ),
    "control: clean renders, uniform weights, lr 2e-5": Variant({**UNIFORM, "learning_rate": 2e-5}, derived="renders"),
    # Online rounds: fresh samples each round, used once. The paper's loss, the negative-aware loss (with the model's
    # own judge, and with the oracle as its upper bound), and uniform self-training.
    "online: SRUM (official loss)": Variant(**ONLINE),
    "online: NFT, self-judge": Variant(NFT, **ONLINE),
    "online: NFT, prob self-judge": Variant(NFT, judge="prob", **ONLINE),
    "online: NFT, oracle rewards": Variant(NFT, judge="oracle", **ONLINE),
    "online: self-SFT (uniform weights)": Variant(UNIFORM, **ONLINE),
}
DERIVED = {"correct": lambda rollouts, model: oracle_correct(rollouts), "renders": replaced_by_renders}


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
    run_args, rounds, base_args, base_rollouts, model_args = parse_arguments(
        (RunArguments, RoundsConfig, SRUMConfig, RolloutConfig, SRUMModelConfig),
        recipe_argv,
        prog="experiments.py",
        default_config=DEFAULT_CONFIG,
    )
    logging.basicConfig(level=logging.WARNING)
    model_path = model_args.model_name_or_path or DEFAULT_MODEL_DIR
    unknown = [name for name in own.variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    def load():
        return load_unified_model(model_path, dtype=torch.float32).eval()

    for seed in own.seeds:
        # Variants run later for the same seed are added to its file (the base and the rollouts are the same).
        seed_file = output / f"results-seed{seed}.json"
        results: dict[str, dict] = json.loads(seed_file.read_text()) if seed_file.is_file() else {}
        evaluation = {
            "per_category": run_args.eval_prompts_per_category,
            "num_images": run_args.eval_num_images,
            "seed": 100 * seed,
            "image_width": base_rollouts.image_width,
            "image_height": base_rollouts.image_height,
            "generation_kwargs": base_rollouts.generation_kwargs,
        }
        results["base"] = measure(load(), output / f"seed-{seed}" / "eval-base", **evaluation)
        rollouts: dict[str, Dataset] = {}
        for name in own.variants:
            variant = VARIANTS[name]
            folder = output / f"seed-{seed}" / f"variant-{list(VARIANTS).index(name)}"
            training_args = dataclasses.replace(base_args, seed=seed, output_dir=str(folder), **variant.overrides)
            peft_config = None
            if variant.lora_rank is not None:
                peft_config = LoraConfig(r=variant.lora_rank, lora_alpha=2 * variant.lora_rank)
            started = time.perf_counter()
            model = load()
            if variant.online:
                model = train_online(model, variant, training_args, base_rollouts, rounds, peft_config, seed)
            else:
                dataset = offline_rollouts(rollouts, variant, base_rollouts, seed, output, load)
                trainer = SRUMTrainer(model, training_args, train_dataset=dataset, peft_config=peft_config)
                trainer.train()
                model = trainer.model
            results[name] = measure(model.eval(), folder / "eval", **evaluation)
            results[name]["minutes"] = (time.perf_counter() - started) / 60
            output.mkdir(parents=True, exist_ok=True)
            seed_file.write_text(json.dumps(results, indent=2))
    print_table(output)


def offline_rollouts(cache: dict[str, Dataset], variant: Variant, base_config, seed: int, output: Path, load):
    """The variant's rollout set, drawn once per seed and judge with the base model (or derived from the text ones)."""
    key = variant.derived or variant.judge
    if key in cache:
        return cache[key]
    if variant.derived is not None or variant.judge == "oracle":
        text = offline_rollouts(cache, Variant(), base_config, seed, output, load)
        cache[key] = rescored_by_oracle(text) if variant.judge == "oracle" else DERIVED[variant.derived](text, load())
        return cache[key]
    config = dataclasses.replace(
        base_config,
        rollout_seed=seed,
        judge_mode=variant.judge,
        rollout_dir=str(output / f"seed-{seed}" / f"rollouts-{variant.judge}"),
    )
    cache[key] = run_rollouts(load(), config_prompts(config), config)
    return cache[key]


def train_online(model, variant: Variant, training_args, base_rollouts, rounds, peft_config, seed: int):
    """Online rounds from the base model: fresh candidates each round, judged by the model itself or the oracle."""
    rollout_config = dataclasses.replace(base_rollouts, rollout_seed=seed)
    if variant.judge != "oracle":
        rollout_config = dataclasses.replace(rollout_config, judge_mode=variant.judge)
    training_args = dataclasses.replace(training_args, num_train_epochs=1, max_steps=-1, save_strategy="no")
    pipeline = SRUMPipeline(
        model,
        config_prompts(rollout_config),
        args=training_args,
        rollout_config=rollout_config,
        rounds=dataclasses.replace(rounds, drift_probe=0),
        peft_config=peft_config,
        judge=OracleJudge() if variant.judge == "oracle" else None,
    )
    return pipeline.run()


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
        change = [accuracy_change(run[name], run["base"]) for run in paired]
        understanding = [100 * run[name]["understanding"] for run in paired]
        cells.append("–" if name == "base" else f"{np.mean(change):+.1f} ± {np.std(change):.1f}")
        cells.append(f"{np.mean(understanding):.1f} ± {np.std(understanding):.1f}")
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
