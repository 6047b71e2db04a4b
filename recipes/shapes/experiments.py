"""The evidence of docs/results.md: base, self-SFT and SRUM variants side by side in the shapes world.

    python recipes/shapes/experiments.py --seeds 0 1 2 --output_dir output/shapes-experiments

For every seed it draws one set of rollouts (stage 1 with the recipe's settings; the seed sets the candidates, the
training noise and the evaluation's sampling seeds), trains every variant on those same rollouts from the same base
model, and evaluates each on the held-out prompts with the same sampling seeds, so all numbers of one seed are paired.
The `prob` variant re-judges the same candidates with the token-probability judge. Results go to
`<output_dir>/results.json` and a markdown table is printed (mean ± std over seeds).
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


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srum_bagel import evaluate_shapes, parse_arguments  # noqa: E402

from trl_srum import SRUMTrainer  # noqa: E402
from trl_srum.models import load_unified_model  # noqa: E402
from trl_srum.rollout import resolve_prompts, run_rollouts  # noqa: E402
from trl_srum.shapes.pretrained import DEFAULT_MODEL_DIR  # noqa: E402


# name -> (SRUMConfig overrides, judge mode of the rollouts)
VARIANTS: dict[str, tuple[dict, str]] = {
    "self-SFT (uniform weights)": ({"use_global_reward": False, "use_local_rewards": False}, "text"),
    "SRUM w/o global": ({"use_global_reward": False}, "text"),
    "SRUM w/o constraint (λ_c = 0)": ({"lambda_constraint": 0.0}, "text"),
    "SRUM (official map)": ({}, "text"),
    "SRUM (signed map)": ({"reward_map_mode": "signed"}, "text"),
    "SRUM (prob judge)": ({}, "prob"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", default="output/shapes-experiments")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="a subset of the variant names")
    own, recipe_argv = parser.parse_known_args()
    sys.argv = [sys.argv[0], *recipe_argv]  # everything else is a recipe key (see config_shapes.yaml)
    script_args, base_training_args, base_rollout_config, model_args = parse_arguments()
    logging.basicConfig(level=logging.WARNING)
    output = Path(own.output_dir)
    model_path = model_args.model_name_or_path or DEFAULT_MODEL_DIR
    results: dict[str, list[dict]] = {name: [] for name in ["base", *own.variants]}

    for seed in own.seeds:
        script_args.eval_seeds = [100 * seed, 100 * seed + 1]
        base = load_unified_model(model_path, dtype=torch.float32).eval()
        before, understanding, _ = evaluate_shapes(base, script_args, base_rollout_config, "base")
        results["base"].append({"accuracy": before, "understanding": understanding})
        rollouts = {}
        for name in own.variants:
            overrides, judge_mode = VARIANTS[name]
            if judge_mode not in rollouts:
                rollout_config = copy.deepcopy(base_rollout_config)
                rollout_config.rollout_seed = seed
                rollout_config.judge_mode = judge_mode
                rollout_config.rollout_dir = str(output / f"seed-{seed}" / f"rollouts-{judge_mode}")
                prompts = resolve_prompts(None, rollout_config.shapes_prompts, seed, rollout_config.num_prompts)
                rollouts[judge_mode] = run_rollouts(base, prompts, rollout_config)
            training_args = copy.deepcopy(base_training_args)
            training_args.seed = seed
            training_args.output_dir = str(output / f"seed-{seed}" / name.split(" ")[0].lower())
            for key, value in overrides.items():
                setattr(training_args, key, value)
            started = time.perf_counter()
            model = load_unified_model(model_path, dtype=torch.float32)
            trainer = SRUMTrainer(model, training_args, train_dataset=rollouts[judge_mode])
            trainer.train()
            after, understanding, _ = evaluate_shapes(trainer.model.eval(), script_args, base_rollout_config, name)
            results[name].append(
                {"accuracy": after, "understanding": understanding, "minutes": (time.perf_counter() - started) / 60}
            )
            output.mkdir(parents=True, exist_ok=True)
            (output / "results.json").write_text(json.dumps(results, indent=2))

    categories = list(results["base"][0]["accuracy"])
    print(f"\n| variant | {' | '.join(categories)} | understanding |")
    print(f"|---|{'---|' * len(categories)}---|")
    for name, runs in results.items():
        cells = []
        for category in [*categories, None]:
            values = [r["understanding"] if category is None else r["accuracy"][category] for r in runs]
            cells.append(f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}")
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
