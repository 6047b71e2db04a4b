"""`compbench-vlm`: the SRUM paper's T2I-CompBench protocol, a VLM judge that scores each image 0-100.

The protocol (facts from the SRUM evaluation scripts; the wording of the prompt below is this package's own):

- The judge (Qwen2.5-VL-Instruct in the paper: 7B by default, 32B in its script) sees one image and a rubric prompt
  with five score bands, 81-100 down to 1-20, and answers in JSON with a score and a short explanation. Decoding is
  greedy with a budget of 512 new tokens.
- A category's score is the mean of its images' scores. **Complex** is the unweighted mean of the means of the
  categories complex, complex_action and complex_spatial (the latter two are subsets of complex, so their prompts
  count twice; kept, as the paper's numbers need it). **Overall** is the unweighted mean of the seven other
  categories (3d_spatial, color, non-spatial, numeracy, shape, spatial, texture) and Complex.

What this implementation does differently, on purpose:

- An answer that cannot be parsed is asked again, *sampled* (the official retries were greedy, hence identical),
  up to `judge_retries` times; one that never parses is **missing**: reported per category and left out of the means.
  The official script recorded -1 and averaged it in; `aggregation="official"` does the same, to reproduce published
  numbers exactly.
- The parser (`parse_compbench_score`) reads the answer after any leaked reasoning (`</think>`), JSON with or without
  markdown fences, `"score": "85"`, `Score: 85`, `85/100` and a bare number, and rejects numbers outside 0-100 or on
  another scale (`8/10`) instead of guessing.
- N images per prompt (default 4; the paper drew 1) from seeds that depend only on (base seed, prompt, index).

Prompts with categories outside the paper's set each weigh as one more base category; the rule actually used is
written into `results.json` (`overall_rule`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from PIL import Image

from ..prompt_text import final_answer_text
from ..rollout.prompts import PromptRecord
from ..rollout.runner import candidate_seed
from .config import AGGREGATIONS, EvalConfig
from .protocols import EvalImage, EvalProtocol, Judgement
from .sources import load_prompt_records


COMPLEX_CATEGORIES: tuple[str, ...] = ("complex", "complex_action", "complex_spatial")
BASE_CATEGORIES: tuple[str, ...] = (
    "3d_spatial",
    "color",
    "non-spatial",
    "numeracy",
    "shape",
    "spatial",
    "texture",
)
# The rubric's bands (the official ones), highest first.
SCORE_BANDS: tuple[tuple[int, int, str], ...] = (
    (81, 100, "everything the prompt asks for is in the image, as asked"),
    (61, 80, "most of the prompt is shown; small details differ"),
    (41, 60, "part of the prompt is shown, but key objects or attributes are missing or wrong"),
    (21, 40, "the objects may be there, but the actions, events or relations the prompt asks for are not"),
    (1, 20, "the image does not convey the prompt"),
)


def rubric_prompt(prompt: str) -> str:
    """The question the judge answers about one image: the rubric, the prompt, and the answer format."""
    bands = "\n".join(f"- {low}-{high}: {meaning}" for low, high, meaning in SCORE_BANDS)
    return (
        "You are grading a generated image against the text prompt it was made from.\n"
        f'Prompt: "{prompt}"\n'
        "Check the objects the prompt names, their attributes (colour, shape, texture), where they are placed, and "
        "any actions or relations between them.\n"
        f"Score how well the image matches the prompt, from 0 to 100:\n{bands}\n"
        'Reply with JSON only, in this form: {"score": <integer from 0 to 100>, "explanation": "<one sentence>"}'
    )


_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
# A number may be written on an explicit scale: "/ 100", "out of 100", "%".
_SCALE = r"(?P<scale>[^\S\n]{0,3}(?:/|out[^\S\n]+of)[^\S\n]{0,3}(?P<denominator>[0-9]+(?:\.[0-9]+)?)|[^\S\n]{0,3}%)?"
_JSON_SCORE = re.compile(rf"[\"']score[\"'][^\S\n]*:[^\S\n]*[\"']?(?P<num>{_NUMBER})(?![0-9]){_SCALE}", re.IGNORECASE)
_LABELLED_SCORE = re.compile(
    rf"(?<![a-z])(?:final[^\S\n]+)?(?:score|rating|answer)[^\S\n]{{0,3}}(?:[:=]|-(?=[^\S\n])|is\b)?"
    rf"[^\S\n]{{0,3}}\n?[^\S\n]{{0,3}}"
    rf"(?P<num>{_NUMBER})(?![0-9]){_SCALE}",
    re.IGNORECASE,
)
_BARE_SCORE = re.compile(rf"[\s\"'(\[{{]*(?P<num>{_NUMBER}){_SCALE}[\s\"')\]}}.]*")


def _value(match: re.Match[str]) -> float | None:
    denominator = match.group("denominator")
    if denominator is not None and float(denominator) != 100:
        return None  # another scale: mapping it onto 0-100 would be a guess
    value = float(match.group("num"))
    return value if 0.0 <= value <= 100.0 else None


def parse_compbench_score(text: str) -> float | None:
    """The 0-100 score in a judge's answer, or None when there is none (or it is out of range or on another scale).

    Read from the final answer only (after the last `</think>`, inside the last `<answer>` block; see
    `trl_srum.judge.parsing`), with markdown emphasis and code fences removed. In order of preference, the last of:
    a JSON `"score"` key (`{"score": 85, ...}`, `"score": "85"`); a labelled score (`Score: 85`, `Final score - 85`,
    `The rating is 85`, `Answer: 85`, `Score:` with the number on the next line); or the whole answer being one
    number (`85`, `85/100`, `85%`).
    """
    answer = final_answer_text(text)
    for pattern in (_JSON_SCORE, _LABELLED_SCORE):
        matches = list(pattern.finditer(answer))
        if matches:
            return _value(matches[-1])
    bare = _BARE_SCORE.fullmatch(answer)
    return _value(bare) if bare is not None else None


class ImageJudgeModel(Protocol):
    """A model that answers free-text questions about images (the VLM judge; tests inject scripted ones)."""

    name: str

    def answer(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> list[str]:
        """Answer `questions[i]` about `images[i]`; greedy unless `do_sample`, then drawn from `seed`."""
        ...


class CompBenchProtocol(EvalProtocol):
    """The SRUM paper's T2I-CompBench protocol (see the module docstring); `judge_model` injects a judge."""

    name = "compbench-vlm"
    scale = "0-100"
    aggregations = AGGREGATIONS
    groups = {"Complex": COMPLEX_CATEGORIES}

    def __init__(self, config: EvalConfig, judge_model: ImageJudgeModel | None = None):
        super().__init__(config)
        self._judge_model = judge_model

    def load_prompts(self) -> list[PromptRecord]:
        if not self.config.prompts:
            raise ValueError(
                "compbench-vlm needs prompts: a T2I-CompBench prompt file (e.g. the SRUM release's val_comp.json), "
                "a saved dataset folder or a Hub dataset"
            )
        return load_prompt_records(self.config.prompts, self.config.prompts_split)

    @property
    def judge_name(self) -> str:
        return self._judge_model.name if self._judge_model is not None else self.config.judge_model

    def settings(self) -> dict[str, Any]:
        config = self.config
        return {
            "judge_model": self.judge_name,
            "judge_dtype": config.judge_dtype,
            "max_new_tokens": config.judge_max_new_tokens,
            "retries": config.judge_retries,
            "retry_temperature": config.judge_retry_temperature,
            "rubric": rubric_prompt("{prompt}"),
        }

    def _model(self, device: torch.device) -> ImageJudgeModel:
        if self._judge_model is None:
            from .vlm import TransformersVLM

            self._judge_model = TransformersVLM(
                self.config.judge_model,
                device=device,
                dtype=self.config.judge_dtype,
                max_new_tokens=self.config.judge_max_new_tokens,
            )
        return self._judge_model

    def judge(self, images: Sequence[EvalImage], device: torch.device) -> list[Judgement]:
        model = self._model(device)
        pictures = [image.load() for image in images]
        questions = [rubric_prompt(image.record.prompt) for image in images]
        answers = model.answer(pictures, questions)
        judgements = []
        for image, picture, question, answer in zip(images, pictures, questions, answers, strict=True):
            outputs, score = [answer], parse_compbench_score(answer)
            for attempt in range(1, self.config.judge_retries + 1):
                if score is not None:
                    break
                # One image at a time, from a seed of its own: a retry's draw does not depend on its batch.
                seed = candidate_seed(self.config.eval_seed, f"judge:{image.record.prompt_id}:{image.index}", attempt)
                retry = model.answer(
                    [picture], [question], do_sample=True, temperature=self.config.judge_retry_temperature, seed=seed
                )[0]
                outputs.append(retry)
                score = parse_compbench_score(retry)
            judgements.append(Judgement(score, "\n---\n".join(outputs), len(outputs)))
        return judgements
