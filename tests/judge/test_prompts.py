"""The prompt builders: what each prompt must contain, the concise vocabulary, answers that parse, expected scores."""

import doctest
import re

import pytest
import torch

from trl_srum.judge import prompts
from trl_srum.judge.parsing import parse_global_score, parse_region_scores
from trl_srum.judge.prompts import (
    CONCISE_SCORES,
    PROBABILITY_SCALE,
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
from trl_srum.models.bagel.tiny import TINY_WORDS
from trl_srum.prompt_text import grounding_answer, grounding_prompt, parse_boxes


STYLES = ["detailed", "concise"]
# Words no prompt of ours contains, so that finding them proves the builder used its arguments.
USER_PROMPT = "a zorbling quaffer left of three blivets"
PHRASE = "zorbling quaffer"
IMAGE_SIZE = (1013, 771)
BOXES = [(11, 22, 333, 444), (5.4, 6.6, 77.5, 88.49), (0, 0, 1013, 771)]
ROUNDED = [(11, 22, 333, 444), (5, 7, 78, 88), (0, 0, 1013, 771)]  # round-half-even, as `round` does
NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def build_all(style):
    """(name, text, user text, boxes) for every builder."""
    return [
        ("global_judge", global_judge_prompt(USER_PROMPT, IMAGE_SIZE, style=style), USER_PROMPT, []),
        ("region_judge", region_judge_prompt(USER_PROMPT, BOXES, IMAGE_SIZE, style=style), USER_PROMPT, ROUNDED),
        (
            "region_relevance",
            region_relevance_question(USER_PROMPT, BOXES[1], IMAGE_SIZE, style=style),
            USER_PROMPT,
            ROUNDED[1:2],
        ),
        ("global_probability", global_probability_question(USER_PROMPT, IMAGE_SIZE, style=style), USER_PROMPT, []),
        (
            "region_probability",
            region_probability_question(USER_PROMPT, BOXES[0], IMAGE_SIZE, style=style),
            USER_PROMPT,
            ROUNDED[:1],
        ),
        ("grounding", grounding_prompt(PHRASE, IMAGE_SIZE, style=style), PHRASE, []),
    ]


def box_words(box, style):
    return " ".join(map(str, box)) if style == "concise" else "[" + ", ".join(map(str, box)) + "]"


@pytest.mark.parametrize("style", STYLES)
def test_every_prompt_includes_its_arguments(style):
    width, height = IMAGE_SIZE
    for name, text, user_text, boxes in build_all(style):
        assert user_text in text, name
        size = f"{width} {height}" if style == "concise" else f"{width} x {height}"
        assert size in text, name
        for box in boxes:
            assert box_words(box, style) in text, name


@pytest.mark.parametrize("style", STYLES)
def test_region_prompt_numbers_regions_from_one(style):
    text = region_judge_prompt(USER_PROMPT, BOXES, IMAGE_SIZE, style=style)
    for i, box in enumerate(ROUNDED, start=1):
        entry = (
            f"region {i} box {box_words(box, style)}" if style == "concise" else f"Region {i}: {box_words(box, style)}"
        )
        assert entry in text
    assert "region 4" not in text.lower()


def test_detailed_prompts_differ_by_task():
    texts = [text for _, text, _, _ in build_all("detailed")]
    assert len(set(texts)) == len(texts)
    concise = [text for _, text, _, _ in build_all("concise")]
    assert len(set(concise)) == len(concise)


def concise_tokens_outside_vocabulary(text, user_text):
    assert text.count(user_text) == 1
    vocabulary = set(concise_vocabulary())
    return [w for w in text.replace(user_text, " ").split() if w not in vocabulary and not NUMBER.fullmatch(w)]


def test_concise_prompts_use_only_the_vocabulary():
    for name, text, user_text, _ in build_all("concise"):
        assert concise_tokens_outside_vocabulary(text, user_text) == [], name
        assert text == " ".join(text.split()), f"{name}: words must be separated by single spaces"


def test_concise_answers_use_only_the_vocabulary_and_fixed_scores():
    vocabulary = set(concise_vocabulary())
    score_words = {"-1", "-0.5", "0", "0.5", "1"}
    answers = [
        global_answer(0.3, style="concise"),
        region_answer([0.9, -0.2, -1.0], style="concise"),
        grounding_answer(BOXES, style="concise"),
        grounding_answer([], style="concise"),
        *[answer for answer, _ in PROBABILITY_SCALE],
    ]
    for answer in answers:
        for word in answer.split():
            assert word in vocabulary or NUMBER.fullmatch(word), answer
    for answer in answers[:2]:
        words = answer.split()
        assert all(words[i + 1] in score_words for i, word in enumerate(words) if word == "score"), answer


def test_concise_vocabulary_is_small_and_fixed():
    vocabulary = concise_vocabulary()
    assert vocabulary == sorted(set(vocabulary))
    assert len(vocabulary) <= 20
    assert all(re.fullmatch(r"[a-z]+", word) for word in vocabulary)
    assert {answer for answer, _ in PROBABILITY_SCALE} <= set(vocabulary)
    # The tiny test models spell every word of the concise judge (their list is kept apart: models sit below the judge).
    assert set(vocabulary) <= set(TINY_WORDS)


@pytest.mark.parametrize("score", [-1.0, -0.8, -0.26, -0.25, 0.0, 0.1, 0.3, 0.74, 1.0])
def test_concise_scores_snap_to_the_nearest_fixed_score(score):
    nearest = min(CONCISE_SCORES, key=lambda choice: abs(choice - score))
    assert parse_global_score(global_answer(score, style="concise")) == nearest
    assert parse_region_scores(region_answer([score, -score], style="concise"), 2) == [
        nearest,
        min(CONCISE_SCORES, key=lambda choice: abs(choice + score)),
    ]


@pytest.mark.parametrize("score", [-1.0, -0.55, -0.123, 0.0, 0.05, 0.5, 0.999, 1.0])
def test_detailed_answers_parse_back(score):
    assert parse_global_score(global_answer(score, "the layout is right")) == round(score, 2)
    scores = [score, -score, 0.25]
    assert parse_region_scores(region_answer(scores), 3) == [round(s, 2) for s in scores]
    assert parse_region_scores(region_answer(scores, ["2 red apples", "sky", "a dog"]), 3) == [
        round(s, 2) for s in scores
    ]


@pytest.mark.parametrize("style", STYLES)
def test_grounding_answers_parse_back(style):
    assert parse_boxes(grounding_answer(BOXES, style=style), IMAGE_SIZE) == [tuple(map(float, b)) for b in ROUNDED]
    assert parse_boxes(grounding_answer([], style=style), IMAGE_SIZE) == []


def test_detailed_output_formats_are_what_the_parser_reads():
    # Fill in the format lines the prompts themselves ask for, as a compliant model would.
    text = global_judge_prompt(USER_PROMPT, IMAGE_SIZE)
    template = text[text.rindex("Score: <") :]
    answer = template.replace("<number from -1 to 1>", "-0.35").replace("<one or two sentences>", "fine")
    assert parse_global_score(answer) == -0.35

    text = region_judge_prompt(USER_PROMPT, BOXES, IMAGE_SIZE)
    template = text.splitlines()[-1]
    lines = [
        template.replace("<number>", str(i))
        .replace("<what it shows>", "2 blivets")
        .replace("<number from -1 to 1>", str(score))
        for i, score in [(2, 0.5), (1, -0.75), (3, 1)]
    ]
    assert parse_region_scores("\n".join(lines), 3) == [-0.75, 0.5, 1.0]


def test_prompts_state_the_image_size_and_coordinate_convention():
    for name, text, _, boxes in build_all("detailed"):
        assert "width x height" in text, name
        if boxes or name == "grounding":
            assert "top-left" in text, name


def test_answers_reject_scores_out_of_range():
    for bad in [1.5, -2.0, float("nan")]:
        with pytest.raises(ValueError):
            global_answer(bad)
        with pytest.raises(ValueError):
            region_answer([0.0, bad], style="concise")


@pytest.mark.parametrize(
    "build",
    [
        lambda: global_judge_prompt("x", (0, 10)),
        lambda: region_judge_prompt("x", [], (10, 10)),
        lambda: region_judge_prompt("x", [(1, 2, 3)], (10, 10)),
        lambda: grounding_prompt("x", (10, -1), style="concise"),
        lambda: global_probability_question("x", (10, 10), style="verbose"),
        lambda: region_answer([0.5], ["a", "b"]),
    ],
)
def test_bad_arguments_raise(build):
    with pytest.raises(ValueError):
        build()


def test_probability_scale():
    values = [value for _, value in PROBABILITY_SCALE]
    assert all(-1.0 <= v <= 1.0 for v in values)
    assert max(values) == 1.0 and min(values) == -1.0
    assert len({answer for answer, _ in PROBABILITY_SCALE}) == len(PROBABILITY_SCALE)


def test_expected_score_values():
    log_probs = torch.tensor([[0.0, -torch.inf], [-torch.inf, 0.0], [-0.3, -0.3], [0.0, -1e4]])
    expected = torch.tensor([1.0, -1.0, 0.0, 1.0])
    assert torch.allclose(expected_score(log_probs), expected)
    # p(yes) = 3/4 -> 0.75 - 0.25
    assert expected_score(torch.tensor([0.75, 0.25]).log()).item() == pytest.approx(0.5)


def test_expected_score_only_uses_relative_probabilities():
    generator = torch.Generator().manual_seed(0)
    log_probs = torch.randn(4, 3, 2, generator=generator) * 5 - 10
    scores = expected_score(log_probs)
    assert scores.shape == (4, 3) and scores.dtype == torch.float32
    assert torch.all(scores.abs() <= 1.0)
    assert torch.allclose(expected_score(log_probs + 7.0), scores, atol=1e-6)


def test_expected_score_with_a_five_point_scale():
    scale = (("bad", -1.0), ("poor", -0.5), ("fair", 0.0), ("good", 0.5), ("great", 1.0))
    uniform = torch.zeros(5)
    assert expected_score(uniform, scale).item() == pytest.approx(0.0)
    assert expected_score(torch.tensor([-50.0, -50.0, -50.0, 0.0, -50.0]), scale).item() == pytest.approx(0.5)
    assert expected_score(torch.tensor([0.0, -50, -50, -50, -50], dtype=torch.float16), scale).item() == -1.0


def test_expected_score_rejects_bad_inputs():
    with pytest.raises(ValueError):
        expected_score(torch.zeros(3))
    with pytest.raises(ValueError):
        expected_score(torch.zeros(2), (("yes", 2.0), ("no", -1.0)))


def test_docstring_examples():
    assert doctest.testmod(prompts).failed == 0
