"""Property tests: the parsers never crash, always stay in range, and read back every well-formed answer exactly."""

import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trl_srum.judge.parsing import (
    parse_global_score,
    parse_global_score_detailed,
    parse_region_scores,
    parse_region_scores_detailed,
)
from trl_srum.prompt_text import parse_boxes


# No example database: the suite must not leave a .hypothesis folder in the checkout.
COMMON = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow]}
FUZZ = settings(max_examples=1500, **COMMON)
ROUND_TRIP = settings(max_examples=600, **COMMON)
IMAGE_SIZE = (320, 240)


def clamp(value: float) -> float:
    return min(1.0, max(-1.0, value))


def check_invariants(text: str, num_regions: int) -> None:
    """What must hold for any input at all."""
    parse = parse_global_score_detailed(text)
    score = parse_global_score(text)
    if parse is None:
        assert score is None
    else:
        assert score == parse.value == clamp(parse.raw_value)
        assert -1.0 <= score <= 1.0 and not math.isnan(parse.raw_value)
        assert parse.clamped == (parse.raw_value != score)

    parses = parse_region_scores_detailed(text, num_regions)
    scores = parse_region_scores(text, num_regions)
    assert len(parses) == len(scores) == num_regions
    for parse, score in zip(parses, scores):
        assert (parse is None) == (score is None)
        if parse is not None:
            assert score == parse.value == clamp(parse.raw_value)
            assert -1.0 <= score <= 1.0

    width, height = IMAGE_SIZE
    for x1, y1, x2, y2 in parse_boxes(text, IMAGE_SIZE):
        assert 0.0 <= x1 < x2 <= width and 0.0 <= y1 < y2 <= height
        assert x2 - x1 >= 1.0 and y2 - y1 >= 1.0


# Pieces of real answers, and pieces chosen to break parsers, for junk mixtures.
FRAGMENTS = [
    "Score:",
    "Score: ",
    "score ",
    "**Score:**",
    "Rating: ",
    "Overall score: ",
    '"score": ',
    "'score':",
    "Reason: ",
    "Region ",
    "Region ID: ",
    "region_",
    "### Region ",
    "- **Region ",
    "Identified Object: ",
    "Bounding Box: ",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "Final answer:",
    "\n",
    "\n\n",
    "---",
    "|",
    "| Region | Score |",
    "|---|---|",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ",",
    ":",
    ".",
    "-",
    "+",
    "/",
    "%",
    "*",
    "`",
    "```json",
    "```",
    '"',
    "0",
    "1",
    "2",
    "10",
    "0.5",
    ".5",
    "-0.3",
    "+0.7",
    "8",
    "8/10",
    "75%",
    "1,0",
    "0,5",
    "1e9",
    "9" * 40,
    "\u2212",
    "\u2013",
    "\u2011",
    "\u2014",
    "\uff10",
    "\uff1a",
    "\u00bd",
    "\ufdfa",
    "\u0130",
    "\x00",
    "\r\n",
    "\t",
    " out of 10",
    "box ",
    "<box>",
    "</box>",
    "<|box_start|>",
    "none",
    "N/A",
    "is ",
    "= ",
    "->",
]
fragment = st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12))


@FUZZ
@given(text=st.text(max_size=3000), num_regions=st.integers(0, 12))
def test_random_text_never_breaks_the_parsers(text, num_regions):
    check_invariants(text, num_regions)


@FUZZ
@given(parts=st.lists(fragment, max_size=80), num_regions=st.integers(0, 12))
def test_mixtures_of_answer_pieces_and_junk_never_break_the_parsers(parts, num_regions):
    check_invariants("".join(parts), num_regions)


@settings(max_examples=150, **COMMON)
@given(parts=st.lists(fragment, min_size=1, max_size=20), repeat=st.integers(50, 800))
def test_long_strings_never_break_the_parsers(parts, repeat):
    check_invariants("".join(parts) * repeat, 5)


ADVERSARIAL = {
    "region_words": "region " * 8000,
    "region_ids": "Region 1: " * 5000,
    "unterminated_label": "Score:" + " " * 50000,
    "labels": "Score: " * 8000,
    "open_list": "[1," * 20000,
    "open_braces": "{" * 50000,
    "unclosed_object": "{" + "a" * 50000,
    "digits": "9" * 50000,
    "comma_digits": "Score: 1" + ",1" * 25000,
    "pipes": "|" * 50000,
    "table_rows": "| Region | Score |\n|---|---|\n" + "| 1 | 0.5 |\n" * 4000,
    "unclosed_group": "Region 1 (" + "x" * 50000,
    "think_tags": "<think>" * 8000,
    "final_markers": "<think>\n" + "Final answer\n" * 4000,
    "box_words": "box 1 " * 8000,
    "corner_points": "(1,1)," * 8000,
    "blank_lines": "\n" * 50000,
    "decoration": "- **" * 12000 + "Region 1",
    "half_entries": "Region 1: [1, 2, 3 Score: 0.5/ " * 1600,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_no_catastrophic_backtracking(text):
    start = time.perf_counter()
    check_invariants(text, 10)
    # Linear parsing takes milliseconds here; backtracking regexes take minutes. The bound leaves room for a busy CPU.
    assert time.perf_counter() - start < 5.0


# ----------------------------------------------------------------------------------------------------- round trips
# Scores are k / 1000: their 3-decimal text reads back as exactly the same float.
milli = st.integers(-3000, 3000).map(lambda k: k / 1000)


def number_styles(value: float) -> list[str]:
    """Ways a model writes `value`, all of which must read back as `value`."""
    text = f"{value:.3f}"
    trimmed = text.rstrip("0").rstrip(".") if "." in text else text
    styles = [text, trimmed, text.replace(".", ",")]
    if value >= 0:
        styles.append("+" + text)
    if 0 < abs(value) < 1:
        styles.append(text.replace("0.", ".", 1))
    if value < 0:
        styles += [text.replace("-", minus) for minus in ("\u2212", "\u2013", "\u2011")]
    return styles


GLOBAL_FORMATS = [
    lambda n: f"Score: {n}\nReason: the layout follows the prompt.",
    lambda n: f"**Score:** {n}\n**Reason:** fine",
    lambda n: f"### Score\n{n}\n\n### Reason\nfine",
    lambda n: f"Final score: {n}",
    lambda n: f"The score is {n}.",
    lambda n: f"| Score | Reason |\n|---|---|\n| {n} | fine |",
    lambda n: f"| Score | {n} |",
    lambda n: f"score {n}",
    lambda n: f"<answer>Score: {n}</answer>",
]
JSON_GLOBAL_FORMATS = [
    lambda v: json.dumps({"score": v, "reason": "fine"}),
    lambda v: "```json\n" + json.dumps({"score": v}, indent=2) + "\n```",
    lambda v: json.dumps({"global_score": str(v)}),
]
REASONING = [
    "",
    "<think>Region 1 looks right. Score: 0.123 at first, then Score: -0.9?</think>\n",
    "<think>Score: 0.321\n\nFinal answer:\n",
    "Let me look at the image first.\n\n",
]


@ROUND_TRIP
@given(
    value=milli,
    data=st.data(),
    fmt=st.sampled_from(GLOBAL_FORMATS),
    reasoning=st.sampled_from(REASONING),
)
def test_global_answers_read_back_exactly(value, data, fmt, reasoning):
    number = data.draw(st.sampled_from(number_styles(value)))
    parse = parse_global_score_detailed(reasoning + fmt(number))
    assert parse is not None
    assert parse.value == clamp(value)
    assert parse.raw_value == value
    assert parse.clamped == (abs(value) > 1)


@ROUND_TRIP
@given(value=milli, data=st.data(), reasoning=st.sampled_from(REASONING[:3]))
def test_bare_global_numbers_read_back_exactly(value, data, reasoning):
    # A bare number counts only as the whole answer: after prose it would be a guess.
    number = data.draw(st.sampled_from(number_styles(value)))
    assert parse_global_score(reasoning + number) == clamp(value)
    assert parse_global_score("The image shows 3 cats.\n" + number) is None


@ROUND_TRIP
@given(value=milli, fmt=st.sampled_from(JSON_GLOBAL_FORMATS), reasoning=st.sampled_from(REASONING))
def test_global_json_answers_read_back_exactly(value, fmt, reasoning):
    assert parse_global_score(reasoning + fmt(value)) == clamp(value)


OBJECTS = ["a red apple", "the sky", "2 dogs", "a wooden table, left side", "background", "a blurry face"]


def region_lines(entries, data):
    """Each entry (id, value) as one line in a format drawn per line, with a number style drawn per line."""
    lines = []
    for region, value in entries:
        n = data.draw(st.sampled_from(number_styles(value)))
        what = data.draw(st.sampled_from(OBJECTS))
        lines.append(
            data.draw(
                st.sampled_from(
                    [
                        f"Region {region}: {n}",
                        f"- **Region {region}:** {n}",
                        f"Region {region}: {what} | Score: {n}",
                        f"Region {region} ({what}): {n}",
                        f"region {region} score {n}",
                        f"Region ID: {region}\nIdentified Object: {what}\nBounding Box: [1, 2, 30, 40]\nScore: {n}",
                        f"**Region ID: {region}**\nIdentified Object: {what}\nScore: {n}",
                        f"### Region {region}\n- **Object:** {what}\n- **Score:** {n}",
                    ]
                )
            )
        )
    separator = data.draw(st.sampled_from(["\n", "\n\n", "\n---\n", "\n\n---\n\n", "---"]))
    return separator.join(lines)


def region_json(entries, data):
    objects = [{"id": region, "object": "thing", "bbox": [0, 0, 8, 8], "score": value} for region, value in entries]
    text = json.dumps(
        data.draw(st.sampled_from([{"regions": objects}, objects])), indent=data.draw(st.sampled_from([None, 2]))
    )
    return data.draw(st.sampled_from([text, f"```json\n{text}\n```"]))


def region_table(entries, data):
    rows = "".join(f"| {region} | thing | {value} |\n" for region, value in entries)
    return "| Region | Object | Score |\n|---|---|---|\n" + rows


@ROUND_TRIP
@given(
    num_regions=st.integers(1, 8),
    data=st.data(),
    render=st.sampled_from([region_lines, region_json, region_table]),
    reasoning=st.sampled_from(REASONING),
)
def test_region_answers_read_back_exactly(num_regions, data, render, reasoning):
    # Ids up to num_regions + 2 (out of range ones must be ignored), in any order, with repeats: the last one wins.
    entries = data.draw(st.lists(st.tuples(st.integers(0, num_regions + 2), milli), max_size=3 * num_regions))
    expected: list[float | None] = [None] * num_regions
    for region, value in entries:
        if 1 <= region <= num_regions:
            expected[region - 1] = clamp(value)
    assert parse_region_scores(reasoning + render(entries, data), num_regions) == expected


@ROUND_TRIP
@given(values=st.lists(st.integers(-1000, 1000).map(lambda k: k / 1000), min_size=1, max_size=8), data=st.data())
def test_bare_score_lists_read_back_in_region_order(values, data):
    text = json.dumps(values)
    text = data.draw(st.sampled_from([text, f"```json\n{text}\n```", f"Scores: {text}"]))
    assert parse_region_scores(text, len(values)) == values


@ROUND_TRIP
@given(
    boxes=st.lists(
        st.tuples(st.integers(-50, 400), st.integers(-50, 300), st.integers(-50, 400), st.integers(-50, 300)),
        max_size=6,
    ),
    data=st.data(),
)
def test_boxes_read_back_clipped(boxes, data):
    style = data.draw(
        st.sampled_from(
            [
                lambda b: "[{}, {}, {}, {}]".format(*b),
                lambda b: "<box>({},{}),({},{})</box>".format(*b),
                lambda b: "box {} {} {} {}".format(*b),
                lambda b: json.dumps({"bbox_2d": list(b), "label": "cat"}),
            ]
        )
    )
    text = "\n".join(style(box) for box in boxes)
    width, height = IMAGE_SIZE
    expected = []
    for x1, y1, x2, y2 in boxes:
        x1, x2 = (float(min(max(c, 0), width)) for c in (x1, x2))
        y1, y2 = (float(min(max(c, 0), height)) for c in (y1, y2))
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            expected.append((x1, y1, x2, y2))
    assert parse_boxes(text, IMAGE_SIZE) == expected
