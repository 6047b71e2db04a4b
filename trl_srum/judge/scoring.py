"""The self-judge at work: a unified model scores its own image globally and per region.

Two modes:

- ``"text"``: the model writes its judgement, which `trl_srum.judge.parsing` reads. An unparsable answer is retried
  with *sampling* (the released judge retried greedily and got the same answer back); a judgement that never parses
  is recorded as missing (None), never as a neutral 0.
- ``"prob"``: VQAScore-style. Each question is answered on a fixed scale (`PROBABILITY_SCALE`) and the score is the
  expected value under the model's own answer probabilities, from one forward per image whose prefix is shared by
  all its questions.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from PIL import Image

from ..protocol import Box, UnifiedModel
from .parsing import ScoreParse, parse_global_score_detailed, parse_region_scores_detailed
from .prompts import (
    PROBABILITY_SCALE,
    Style,
    expected_score,
    global_judge_prompt,
    global_probability_question,
    region_judge_prompt,
    region_probability_question,
    region_relevance_question,
)


JudgeMode = Literal["text", "prob"]


@dataclass
class Judgement:
    """The judge's verdict on one image."""

    global_score: float | None = field(default=None, metadata={"help": "Layout score in [-1, 1]; None = missing."})
    region_scores: list[float | None] = field(
        default_factory=list, metadata={"help": "One score per region in [-1, 1]; None = missing."}
    )
    global_output: str = field(default="", metadata={"help": "Raw text of the global judgement (text mode)."})
    region_output: str = field(default="", metadata={"help": "Raw text of the region judgement (text mode)."})
    clamped_scores: int = field(default=0, metadata={"help": "Scores the judge wrote outside [-1, 1]."})
    attempts: int = field(default=0, metadata={"help": "Text generations used, retries included."})


class Judge(Protocol):
    """What stage 1 asks a judge: `SelfJudge` (the model itself) implements it; so can a stand-in for experiments,
    e.g. an oracle that gives the upper bound of perfect rewards."""

    def relevance(self, image: Image.Image, prompt: str, boxes: Sequence[Box]) -> list[float]:
        """Probability that each region is relevant to the prompt."""
        ...

    def judge(
        self, image: Image.Image, prompt: str, boxes: Sequence[Box], generator: torch.Generator | None = None
    ) -> Judgement:
        """A global score and one score per box (boxes in the image's pixels)."""
        ...


class SelfJudge:
    """Ask a `UnifiedModel` about its own image.

    Args:
        model: the model that generated the images (and now judges them).
        mode: ``"text"`` or ``"prob"`` (see the module docstring).
        style: ``"detailed"`` prompts for real models, ``"concise"`` for tiny ones trained on that wording.
        think: let the judge reason before answering (text mode).
        max_new_tokens: token budget of a text answer.
        retries: extra sampled attempts for answers that do not parse.
        retry_temperature: temperature of those attempts.
    """

    def __init__(
        self,
        model: UnifiedModel,
        *,
        mode: JudgeMode = "text",
        style: Style = "detailed",
        think: bool = False,
        max_new_tokens: int = 512,
        retries: int = 2,
        retry_temperature: float = 0.7,
    ):
        if mode not in ("text", "prob"):
            raise ValueError(f"judge mode must be 'text' or 'prob', got {mode!r}")
        self.model = model
        self.mode = mode
        self.style = style
        self.think = think
        self.max_new_tokens = max_new_tokens
        self.retries = retries
        self.retry_temperature = retry_temperature
        self.scale_answers = [answer for answer, _ in PROBABILITY_SCALE]

    # ------------------------------------------------------------------ relevance filter
    def relevance(self, image: Image.Image, prompt: str, boxes: Sequence[Box]) -> list[float]:
        """Probability that each region is relevant to the prompt, from the model's yes/no answer probabilities."""
        if not boxes:
            return []
        questions = [region_relevance_question(prompt, box, image.size, style=self.style) for box in boxes]
        log_probs = self.model.score_answers(image, questions, self.scale_answers).float().cpu()
        # expected_score maps P(yes) to 2 P(yes) - 1 on the yes/no scale; an unanswerable question counts as irrelevant.
        relevance = (expected_score(log_probs, PROBABILITY_SCALE) + 1.0) / 2.0
        return torch.nan_to_num(relevance, nan=0.0).tolist()

    # ------------------------------------------------------------------ judging
    def judge(
        self, image: Image.Image, prompt: str, boxes: Sequence[Box], generator: torch.Generator | None = None
    ) -> Judgement:
        """Score one image: a global score and one score per box (boxes in the image's pixels)."""
        if self.mode == "prob":
            return self._judge_by_probability(image, prompt, boxes)
        return self._judge_by_text(image, prompt, boxes, generator)

    def _judge_by_probability(self, image: Image.Image, prompt: str, boxes: Sequence[Box]) -> Judgement:
        questions = [global_probability_question(prompt, image.size, style=self.style)]
        questions += [region_probability_question(prompt, box, image.size, style=self.style) for box in boxes]
        log_probs = self.model.score_answers(image, questions, self.scale_answers).float().cpu()
        scores = expected_score(log_probs, PROBABILITY_SCALE)
        # Answer log-probabilities that are NaN or all -inf give a NaN score: missing, never a made-up one.
        values = [value if math.isfinite(value) else None for value in scores.tolist()]
        return Judgement(global_score=values[0], region_scores=values[1:])

    def _ask(
        self, image: Image.Image, questions: list[str], attempt: int, generator: torch.Generator | None
    ) -> list[str]:
        # The first attempt is greedy (the model's best answer); retries sample so that they can differ.
        sampled = attempt > 0
        return self.model.answer_questions(
            [image] * len(questions),
            questions,
            max_new_tokens=self.max_new_tokens,
            do_sample=sampled,
            temperature=self.retry_temperature if sampled else 1.0,
            generators=[generator] * len(questions) if sampled and generator is not None else None,
            think=self.think,
        )

    def _judge_by_text(
        self, image: Image.Image, prompt: str, boxes: Sequence[Box], generator: torch.Generator | None
    ) -> Judgement:
        judgement = Judgement(region_scores=[None] * len(boxes))
        questions = {"global": global_judge_prompt(prompt, image.size, style=self.style)}
        if boxes:
            questions["regions"] = region_judge_prompt(prompt, boxes, image.size, style=self.style)
        outputs: dict[str, list[str]] = {key: [] for key in questions}
        global_parse: ScoreParse | None = None
        region_parses: list[ScoreParse | None] = [None] * len(boxes)
        pending = list(questions)
        for attempt in range(1 + self.retries):
            # Both questions go in one batched call; a retry asks again only what is still unparsed.
            answers = self._ask(image, [questions[key] for key in pending], attempt, generator)
            judgement.attempts += len(pending)
            for key, answer in zip(pending, answers, strict=True):
                outputs[key].append(answer)
                if key == "global":
                    global_parse = parse_global_score_detailed(answer)
                else:
                    # A retry only fills the regions that earlier attempts left missing.
                    parsed = parse_region_scores_detailed(answer, len(boxes))
                    region_parses = [old or new for old, new in zip(region_parses, parsed, strict=True)]
            pending = [
                key
                for key in pending
                if (key == "global" and global_parse is None) or (key == "regions" and None in region_parses)
            ]
            if not pending:
                break

        # Every attempt is kept, so a failed row shows what the judge wrote each time.
        judgement.global_output = "\n---\n".join(outputs["global"])
        judgement.region_output = "\n---\n".join(outputs.get("regions", []))
        parses = [global_parse, *region_parses]
        judgement.clamped_scores = sum(p is not None and p.clamped for p in parses)
        judgement.global_score = global_parse.value if global_parse is not None else None
        judgement.region_scores = [p.value if p is not None else None for p in region_parses]
        return judgement
