"""The shapes world's exact oracle in the place of stage 1's judge: the rewards a perfect self-judge would give.

Only experiments use it, to measure how far SRUM could go with perfect rewards (an upper bound); the main job and
stage 1 of any real run judge with the model itself.
"""

from collections.abc import Sequence

import torch
from PIL import Image

from ..judge.scoring import Judgement
from ..protocol import Box
from .spec import parse_prompt
from .tasks import oracle_judgement


class OracleJudge:
    """Implements `trl_srum.judge.scoring.Judge` with the oracle: every proposal is relevant, and the scores are the
    labels the tiny judge was pretrained on, read from the image exactly (`tasks.oracle_judgement`)."""

    def relevance(self, image: Image.Image, prompt: str, boxes: Sequence[Box]) -> list[float]:
        return [1.0] * len(boxes)

    def judge(
        self, image: Image.Image, prompt: str, boxes: Sequence[Box], generator: torch.Generator | None = None
    ) -> Judgement:
        global_score, region_scores = oracle_judgement(image, parse_prompt(prompt), boxes)
        return Judgement(global_score=global_score, region_scores=list(region_scores))
