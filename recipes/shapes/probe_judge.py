"""Can the model judge its own samples? The question SRUM stands on, answered exactly in the shapes world.

    python recipes/shapes/probe_judge.py                                   # the shipped model
    python recipes/shapes/probe_judge.py --model_name_or_path runs/judge   # e.g. a retrained judge

The model draws `--candidates` images for `--per_category` training prompts of every category (fixed seeds), and
the oracle labels them. Printed:

- the plain VQA questions of pretraining (exists / count / colour / relation) on those samples and on clean renders
  of the same prompts, each next to the accuracy of always giving the most frequent answer;
- how well the `prob` judge's P(yes) to "does the layout match the prompt?" ranks the samples (AUC against the
  oracle's verdict: 0.5 is chance), over all samples and averaged within categories (where the prompt's category
  cannot help).
Writes the same figures to `--output` as JSON.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from trl_srum.judge.prompts import global_probability_question
from trl_srum.models import load_unified_model
from trl_srum.shapes import CATEGORIES, parse_prompt, render, sample_specs
from trl_srum.shapes.evaluation import generation_accuracy, ranking_auc, vqa_accuracy
from trl_srum.shapes.pretrained import DEFAULT_MODEL_DIR, SHAPES_IMAGE_SIZE, SHAPES_SAMPLING


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--per_category", type=int, default=12)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="output/probe_judge.json")
    args = parser.parse_args()
    model = load_unified_model(args.model_name_or_path, dtype=torch.float32).eval()

    specs = {category: sample_specs(category, args.per_category, args.seed, split="train") for category in CATEGORIES}
    # The same draws as an evaluation: every prompt with `--candidates` sampling seeds, judged by the oracle.
    seeds = [100 * args.seed + candidate for candidate in range(args.candidates)]
    _, samples = generation_accuracy(model, specs, seeds, image_size=SHAPES_IMAGE_SIZE, **SHAPES_SAMPLING)
    images = [sample.image for sample in samples]
    correct = np.array([sample.correct for sample in samples])
    margins = []
    with torch.no_grad():
        for sample in tqdm(samples, desc="prob judge", unit="image"):
            question = global_probability_question(sample.prompt, sample.image.size, style="concise")
            log_probs = model.score_answers(sample.image, [question], ["yes", "no"])[0]
            margins.append(float(log_probs[0] - log_probs[1]))
    categories = np.array([sample.category for sample in samples])
    margins = np.array(margins)
    within = [ranking_auc(margins[categories == c], correct[categories == c]) for c in CATEGORIES]
    renders = [render(parse_prompt(sample.prompt), size=SHAPES_IMAGE_SIZE, seed=i) for i, sample in enumerate(samples)]
    report = {
        "samples": len(images),
        "oracle_correct": float(correct.mean()),
        "vqa_own_samples": vqa_accuracy(model, images, seed=args.seed),
        "vqa_renders": vqa_accuracy(model, renders, seed=args.seed),
        "prob_judge_auc": ranking_auc(margins, correct),
        "prob_judge_auc_within_category": float(np.nanmean(within)),
    }
    print(f"\n{len(images)} own samples, {100 * report['oracle_correct']:.1f}% correct by the oracle")
    print("\n| question | own samples | (majority) | clean renders | (majority) |\n|---|---:|---:|---:|---:|")
    for kind, own in report["vqa_own_samples"].items():
        rendered = report["vqa_renders"].get(kind, {"accuracy": float("nan"), "majority": float("nan")})
        print(
            f"| {kind} | {100 * own['accuracy']:.1f} | ({100 * own['majority']:.1f}) | "
            f"{100 * rendered['accuracy']:.1f} | ({100 * rendered['majority']:.1f}) |"
        )
    print(
        f"\nprob judge AUC on own samples: {report['prob_judge_auc']:.3f} overall, "
        f"{report['prob_judge_auc_within_category']:.3f} within categories (0.5 = chance)"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
