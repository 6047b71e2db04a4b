"""The self-judge: the prompts a unified model answers about its own images, and parsers for its answers."""

from .parsing import (
    ScoreParse,
    parse_global_score,
    parse_global_score_detailed,
    parse_region_scores,
    parse_region_scores_detailed,
)
from .prompts import (
    CONCISE_SCORES,
    PROBABILITY_SCALE,
    Style,
    concise_vocabulary,
    expected_score,
    global_answer,
    global_judge_prompt,
    global_probability_question,
    region_answer,
    region_judge_prompt,
    region_probability_question,
    region_relevance_question,
)


__all__ = [
    "CONCISE_SCORES",
    "PROBABILITY_SCALE",
    "ScoreParse",
    "Style",
    "concise_vocabulary",
    "expected_score",
    "global_answer",
    "global_judge_prompt",
    "global_probability_question",
    "parse_global_score",
    "parse_global_score_detailed",
    "parse_region_scores",
    "parse_region_scores_detailed",
    "region_answer",
    "region_judge_prompt",
    "region_probability_question",
    "region_relevance_question",
]
