"""The error kinds and judge measurements of `trl_srum.shapes.diagnostics`, on renders whose mistakes are known."""

import numpy as np
import pytest

from trl_srum.shapes import Detection, Reading, evaluate, judge, parse_prompt, render
from trl_srum.shapes.diagnostics import best_of_k_accuracy, drawing_errors, error_breakdown, valid_object_fraction


def _errors(drawn: str, asked: str) -> set[str]:
    image = render(parse_prompt(drawn), size=64, seed=0)
    return drawing_errors(evaluate(image, parse_prompt(asked)), parse_prompt(asked))


@pytest.mark.parametrize(
    ("drawn", "asked", "expected"),
    [
        ("a red circle and a blue square", "a red circle and a blue square", set()),
        ("a blue circle and a red square", "a red circle and a blue square", {"binding"}),
        ("a red circle", "a red circle and a blue square", {"missing"}),
        ("three red circles", "two red circles", {"count"}),
        ("a red circle above a blue square", "a red circle below a blue square", {"relation"}),
        ("a red circle and a green triangle", "a red circle", {"extra"}),
    ],
)
def test_each_kind_of_mistake_is_named(drawn, asked, expected):
    assert _errors(drawn, asked) == expected


def test_an_unreadable_object_is_a_drawing_error_not_a_compositional_one():
    reading = Reading(True, (Detection("red", "unknown", (0, 0, 9, 9), 60),))
    spec = parse_prompt("a red circle")
    kinds = drawing_errors(judge(reading, spec), spec)
    assert kinds == {"malformed", "missing"}
    assert error_breakdown([kinds, {"count"}, set()]) == {
        "wrong": 2,
        "share_with": {
            "count": 0.5,
            "binding": 0.0,
            "relation": 0.0,
            "missing": 0.5,
            "extra": 0.0,
            "malformed": 0.5,
            "background": 0.0,
        },
        "compositional_only": 0.5,
        "any_drawing_error": 0.5,
    }
    assert valid_object_fraction([reading, Reading(True, (Detection("red", "circle", (0, 0, 9, 9), 60),))]) == (0.5, 2)


def test_best_of_k_keeps_the_highest_scoring_candidate_and_never_a_missing_score():
    correct = [[False, True, False], [True, False, False]]
    scores = [[0.1, 0.9, 0.2], [np.nan, 0.3, 0.1]]
    assert best_of_k_accuracy(correct, scores) == 0.5
    with pytest.raises(ValueError, match="prompts, candidates"):
        best_of_k_accuracy([True, False], [0.1, 0.2])
