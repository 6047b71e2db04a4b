"""Does the model draw well, fail at composition, and see its own mistakes? Issue 15's rungs 1 and 2, measured.

    python recipes/shapes/probe_judge.py --split heldout                       # the shipped model, held-out prompts
    python recipes/shapes/probe_judge.py --model_name_or_path runs/m1 --split train   # tune on training prompts

The model draws `--candidates` images (fixed seeds, the shipped sampler settings `SHAPES_SAMPLING`) for up to
`--per_category` prompts of every category of one split, and the oracle reads and judges them. Printed and written to
`--output` as JSON:

- rung 1: the share of drawn objects the oracle reads as some valid shape and colour; single-sample accuracy per
  category; what the wrong images get wrong (`trl_srum.shapes.diagnostics.drawing_errors`);
- rung 2: how well the `prob` self-judge (`SelfJudge(model, mode="prob", style="concise")`: P(yes) to "does the layout
  match the prompt?") ranks the model's own samples against the oracle's verdict (AUC, 0.5 = chance), overall and
  within each category; and the accuracy when each prompt keeps the first `--best_of` candidates' best by that judge;
- with `--vqa`: the plain VQA questions of pretraining on the samples, next to always giving the most frequent answer.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from trl_srum.judge.scoring import SelfJudge
from trl_srum.models import load_unified_model
from trl_srum.shapes import CATEGORIES, detect, judge, parse_prompt
from trl_srum.shapes.diagnostics import best_of_k_accuracy, drawing_errors, error_breakdown, valid_object_fraction
from trl_srum.shapes.evaluation import evaluation_specs, generation_accuracy, ranking_auc, vqa_accuracy
from trl_srum.shapes.pretrained import DEFAULT_MODEL_DIR, SHAPES_IMAGE_SIZE, SHAPES_SAMPLING


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--split", choices=["train", "heldout"], default="train")
    parser.add_argument("--per_category", type=int, default=54)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--best_of", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vqa", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="output/probe_judge.json")
    args = parser.parse_args()
    if not 1 <= args.best_of <= args.candidates:
        raise ValueError(f"--best_of {args.best_of} must lie in 1..--candidates ({args.candidates})")
    torch.set_num_threads(args.threads)
    model = load_unified_model(args.model_name_or_path, dtype=torch.float32).eval()

    specs = evaluation_specs(args.per_category, split=args.split, seed=args.seed)
    seeds = [1000 * args.seed + candidate for candidate in range(args.candidates)]
    _, samples = generation_accuracy(model, specs, seeds, image_size=SHAPES_IMAGE_SIZE, **SHAPES_SAMPLING)
    readings = [detect(sample.image) for sample in tqdm(samples, desc="oracle", unit="image")]
    specs_drawn = [parse_prompt(sample.prompt) for sample in samples]
    errors = [drawing_errors(judge(reading, spec), spec) for spec, reading in zip(specs_drawn, readings, strict=True)]
    self_judge = SelfJudge(model, mode="prob", style="concise")
    with torch.no_grad():
        scores = [
            self_judge.judge(sample.image, sample.prompt, []).global_score
            for sample in tqdm(samples, desc="prob judge", unit="image")
        ]
    scores = np.array([np.nan if score is None else score for score in scores])
    correct = np.array([sample.correct for sample in samples])
    categories = np.array([sample.category for sample in samples])

    # Samples come prompt by prompt, `--candidates` each, in seed order.
    per_prompt = (-1, args.candidates)
    picked_correct = correct.reshape(per_prompt)[:, : args.best_of]
    picked_scores = scores.reshape(per_prompt)[:, : args.best_of]
    prompt_categories = categories.reshape(per_prompt)[:, 0]
    valid, objects = valid_object_fraction(readings)
    report = {
        "model": args.model_name_or_path,
        "split": args.split,
        "prompts": len(picked_correct),
        "samples": len(samples),
        "sampling": {k: list(v) if isinstance(v, tuple) else v for k, v in SHAPES_SAMPLING.items()},
        "valid_object_fraction": valid,
        "objects": objects,
        "accuracy": {c: float(correct[categories == c].mean()) for c in CATEGORIES}
        | {"overall": float(correct.mean())},
        "errors": error_breakdown(errors),
        "prob_judge_auc": ranking_auc(scores, correct),
        "prob_judge_auc_within": {
            c: ranking_auc(scores[categories == c], correct[categories == c]) for c in CATEGORIES
        },
        "best_of": args.best_of,
        "single_sample_accuracy": float(picked_correct.mean()),
        "best_of_k_accuracy": best_of_k_accuracy(picked_correct, picked_scores),
        "best_of_k_within": {
            c: best_of_k_accuracy(picked_correct[prompt_categories == c], picked_scores[prompt_categories == c])
            for c in CATEGORIES
        },
        "oracle_best_of_k_accuracy": float(picked_correct.any(axis=1).mean()),
    }
    if args.vqa:
        report["vqa_own_samples"] = vqa_accuracy(model, [sample.image for sample in samples], seed=args.seed)
    print(json.dumps(report, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
