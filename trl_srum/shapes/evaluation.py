"""Measure a unified model in the shapes world: how well it draws (by the oracle) and how well it judges.

Both measurements use fixed seeds, so "before" and "after" numbers of the same model family are paired: the same
prompt is drawn from the same initial noise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..judge import prompts as judge_prompts
from ..prompt_text import Style
from ..protocol import UnifiedModel
from .augment import ALTERATIONS, alter, perturb
from .oracle import accuracy_table, detect, evaluate
from .render import render
from .spec import describe
from .splits import CATEGORIES, all_specs, sample_specs
from .tasks import vqa_questions


@dataclass
class GenerationSample:
    category: str
    prompt: str
    seed: int
    image: Image.Image
    correct: bool


def evaluation_specs(per_category: int, split: str = "heldout", seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Up to `per_category` distinct specs of every category from one split (all of them when there are fewer)."""
    return {
        category: sample_specs(category, min(per_category, len(all_specs(category, split))), seed, split=split)
        for category in CATEGORIES
    }


def _sample_seed(prompt: str, seed: int) -> int:
    digest = hashlib.sha256(f"eval:{seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@torch.no_grad()
def generation_accuracy(
    model: UnifiedModel,
    specs: Mapping[str, Sequence[Mapping[str, Any]]],
    seeds: Sequence[int],
    *,
    image_size: int = 64,
    batch_size: int = 32,
    **sampling_kwargs: Any,
) -> tuple[dict[str, dict[str, float]], list[GenerationSample]]:
    """Oracle accuracy of the model's images, per category and overall.

    Every (spec, seed) pair is drawn once; the image's noise depends only on the prompt and the seed.

    Returns:
        The `accuracy_table` and every sample (for grids of the same prompts before and after training).
    """
    jobs = [(category, spec, seed) for category, group in specs.items() for spec in group for seed in seeds]
    samples: list[GenerationSample] = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="drawing evaluation images", unit="batch"):
        batch = jobs[start : start + batch_size]
        prompts = [describe(spec) for _, spec, _ in batch]
        images = model.generate_images(
            prompts,
            generators=[torch.Generator().manual_seed(_sample_seed(p, s)) for p, (_, _, s) in zip(prompts, batch)],
            image_size=(image_size, image_size),
            **sampling_kwargs,
        )
        for (category, spec, seed), prompt, generated in zip(batch, prompts, images, strict=True):
            correct = evaluate(generated.image, spec)["correct"]
            samples.append(GenerationSample(category, prompt, seed, generated.image, correct))
    return accuracy_table((s.category, s.correct) for s in samples), samples


@torch.no_grad()
def understanding_accuracy(
    model: UnifiedModel,
    specs: Sequence[Mapping[str, Any]],
    *,
    style: Style = "concise",
    image_size: int = 64,
    seed: int = 0,
) -> float:
    """How often the model answers "does this image match the prompt?" right on degraded renders.

    Every spec is rendered (then perturbed like a generated image) and asked about twice: with its own prompt
    (answer yes) and with a prompt altered by one error (answer no). The answer is the likelier of yes/no under the
    model's token probabilities, as the `prob` judge reads it.
    """
    rng = np.random.default_rng(seed)
    hits = []
    for index, spec in enumerate(tqdm(specs, desc="understanding test", unit="scene")):
        image = perturb(render(spec, size=image_size, seed=seed * 100_003 + index), seed=index)
        kinds = [k for k in rng.permutation(ALTERATIONS) if alter(spec, k, index) is not None]
        if not kinds:
            continue
        wrong = alter(spec, kinds[0], index)
        questions = [
            judge_prompts.global_probability_question(describe(s), image.size, style=style) for s in (spec, wrong)
        ]
        log_probs = model.score_answers(image, questions, ["yes", "no"])
        says_yes = (log_probs[:, 0] > log_probs[:, 1]).tolist()
        hits += [says_yes[0], not says_yes[1]]
    return float(np.mean(hits)) if hits else float("nan")


@torch.no_grad()
def vqa_accuracy(
    model: UnifiedModel, images: Sequence[Image.Image], *, seed: int = 0, batch_size: int = 64
) -> dict[str, dict[str, float]]:
    """Plain VQA questions about each image (`tasks.vqa_questions`, labelled by the oracle), answered greedily.

    Returns, per question kind, `accuracy` and `majority` (the accuracy of always giving that kind's most frequent
    answer): a model that does not look at the images scores its majority, not zero.
    """
    rng = np.random.default_rng(seed)
    asked = [(image, labelled) for image in images for labelled in vqa_questions(detect(image), rng)]
    answers: list[str] = []
    for start in tqdm(range(0, len(asked), batch_size), desc="VQA probe", unit="batch"):
        batch = asked[start : start + batch_size]
        answers += model.answer_questions([i for i, _ in batch], [q.question for _, q in batch], max_new_tokens=4)
    table = {}
    for kind in sorted({q.kind for _, q in asked}):
        pairs = [(q.answer, a.strip()) for (_, q), a in zip(asked, answers, strict=True) if q.kind == kind]
        labels = [label for label, _ in pairs]
        table[kind] = {
            "accuracy": float(np.mean([label == answer for label, answer in pairs])),
            "majority": max(labels.count(label) for label in set(labels)) / len(labels),
            "questions": len(pairs),
        }
    return table


def ranking_auc(scores: Sequence[float], correct: Sequence[bool]) -> float:
    """Probability that a correct image scores above a wrong one (ties count half); NaN without both kinds."""
    scores_array, labels = np.asarray(scores, dtype=float), np.asarray(correct, dtype=bool)
    right, wrong = scores_array[labels], scores_array[~labels]
    if not len(right) or not len(wrong):
        return float("nan")
    above = (right[:, None] > wrong[None, :]).mean() + 0.5 * (right[:, None] == wrong[None, :]).mean()
    return float(above)
