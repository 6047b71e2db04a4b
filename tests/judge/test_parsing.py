"""Hand-written judge outputs, as real models write them, with the scores the parsers must read from them."""

import doctest

import pytest

from trl_srum.judge import parsing
from trl_srum.judge.parsing import (
    ScoreParse,
    parse_global_score,
    parse_global_score_detailed,
    parse_region_scores,
    parse_region_scores_detailed,
)
from trl_srum.prompt_text import parse_boxes


# (id, judge output, expected global score)
GLOBAL_CASES = [
    ("plain", "Score: 0.8\nReason: The mug sits left of the laptop as asked.", 0.8),
    (
        "reasoning_then_answer",
        "<think>The prompt wants the cat above the box. At first glance Score: 0.9 seems right, but the cat is "
        "beside the box.</think>\n\nScore: -0.6\nReason: The cat is next to the box, not on it.",
        -0.6,
    ),
    ("think_closed_without_answer", "<think>Score: 0.7 would be fair.</think>\nThe layout is fine.", None),
    (
        "think_unterminated_with_final_answer",
        "<think>Looking at the left side, Score: 0.2 maybe. The bench is centred.\n\nFinal answer:\nScore: 0.55\n"
        "Reason: mostly correct.",
        0.55,
    ),
    ("think_unterminated_no_marker", "<think>first guess Score: 0.1\nOn reflection:\nScore: 0.4", 0.4),
    ("answer_tags", "<think>hmm Score: 1</think><answer>Score: 0.4\nReason: ok</answer>", 0.4),
    ("markdown_bold", "**Score:** 0.85\n**Reason:** Both vases stand on the shelf.", 0.85),
    ("markdown_heading", "### Score\n**-0.4**\n\n### Reason\nThe tree is on the wrong side.", -0.4),
    ("json_fenced", '```json\n{"score": 0.5, "reason": "the red ball is above the cube"}\n```', 0.5),
    ("json_string_value", "{'score': '-0.3', 'reason': 'crowded'}", -0.3),
    ("json_qualified_key", '{"global_score": 0.25}', 0.25),
    ("unicode_minus", "Score: \u22120.6\nReason: reversed.", -0.6),
    ("en_dash", "Score: \u20130.6", -0.6),
    ("non_breaking_hyphen", "Score: \u20110.6", -0.6),
    ("full_width", "Score\uff1a\uff10.\uff15", 0.5),
    ("leading_dot", "Score: .5\nReason: fine", 0.5),
    ("negative_leading_dot", "Score: -.25", -0.25),
    ("plus_sign", "Score: +0.7", 0.7),
    ("decimal_comma", "Score: 0,5\nReason: half right", 0.5),
    ("out_of_range_high", "Score: 8\nReason: great", 1.0),
    ("out_of_range_low", "Score: -3", -1.0),
    ("fraction_rejected", "Score: 8/10\nReason: good overall", None),
    ("fraction_of_one_rejected", "Score: 0.8 / 1.0", None),
    ("percentage_rejected", "Score: 75%", None),
    ("out_of_rejected", "Rating: 4 out of 5", None),
    ("no_score", "The image shows two dogs on a beach.", None),
    ("not_applicable", "Score: N/A\nReason: cannot judge", None),
    ("score_verb_in_prose_ignored", "Score: 0.3\nReason: It would score 0.9 if the lamp were on the left.", 0.3),
    ("prose_only_verb", "This layout would score 0.9 in my opinion.", None),
    ("revision_last_wins", "Score: 0.5\n\nWait, the dog faces the wrong way.\nScore: -0.5\nReason: revised", -0.5),
    ("overall_preferred", "Overall score: 0.7\nReason: (spatial score: 0.6, count score: 0.9)", 0.7),
    ("components_then_overall", "Spatial score: 0.6\nColour score: 0.9\nOverall score: 0.75", 0.75),
    ("confidence_is_not_a_score", "Score: 0.7\n\nI am fairly sure (confidence score: 0.95).", 0.7),
    ("bare_number", "0.35", 0.35),
    ("bare_number_fenced", "```\n-0.2\n```", -0.2),
    ("table_key_value", "| Score | 0.6 |\n| Reason | good |", 0.6),
    ("table_with_header", "| Score | Reason |\n|---|---|\n| -0.1 | generic scene |", -0.1),
    ("score_is", "The final score is 0.45.", 0.45),
    ("score_equals", "layout_score = 0.3", 0.3),
    ("score_on_next_line", "Score:\n0.65\nReason: fine", 0.65),
    ("concise", "score -0.5", -0.5),
    ("windows_newlines", "Score: 0.2\r\nReason: ok\r\n", 0.2),
    (
        "reason_mentions_numbers",
        "Score: 0.6\nReason: 2 of the 3 cats are on the sofa, 1 is on the floor (about 30% of the frame).",
        0.6,
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in GLOBAL_CASES], ids=[c[0] for c in GLOBAL_CASES])
def test_global_score_table(text, expected):
    assert parse_global_score(text) == expected


@pytest.mark.parametrize(
    ("text", "raw", "clamped"),
    [
        ("Score: 0.8", 0.8, False),
        ("Score: 1", 1.0, False),
        ("Score: -1.0", -1.0, False),
        ("Score: 8", 8.0, True),
        ("Score: -1.5", -1.5, True),
        ("Score: 100", 100.0, True),
    ],
)
def test_global_detailed_reports_clamping(text, raw, clamped):
    parse = parse_global_score_detailed(text)
    assert parse == ScoreParse(min(1.0, max(-1.0, raw)), raw)
    assert parse.clamped is clamped


def test_detailed_is_none_without_score():
    assert parse_global_score_detailed("no score here") is None


OFFICIAL_BLOCKS = [
    "**Region ID: 1**\nIdentified Object: a red apple on the left\nBounding Box: [12, 30, 400, 500]\nScore: 0.95",
    "**Region ID: 2**\nIdentified Object: plain wall in the background\nScore: 0.2",
    "**Region ID: 3**\nIdentified Object: a warped hand, partly covering Region 1\nScore: \u22120.8",
]

# (id, judge output, num_regions, expected region scores)
REGION_CASES = [
    ("official_dash_separators", "\n---\n".join(OFFICIAL_BLOCKS), 3, [0.95, 0.2, -0.8]),
    ("official_blank_lines", "\n\n".join(OFFICIAL_BLOCKS), 3, [0.95, 0.2, -0.8]),
    ("official_no_separators", "\n".join(OFFICIAL_BLOCKS), 3, [0.95, 0.2, -0.8]),
    ("official_dashes_only", "---".join(OFFICIAL_BLOCKS), 3, [0.95, 0.2, -0.8]),
    ("official_one_line", " ".join(b.replace("\n", " ") for b in OFFICIAL_BLOCKS), 3, [0.95, 0.2, -0.8]),
    (
        "official_with_reasoning",
        "<think>Region ID: 1 might be 0.3... Score: 0.3. Region 2 Score: 0.9</think>\n"
        + "\n---\n".join(OFFICIAL_BLOCKS),
        3,
        [0.95, 0.2, -0.8],
    ),
    ("score_lines", "Region 1: 0.8\nRegion 2: -.5\nRegion 3: +0.7", 3, [0.8, -0.5, 0.7]),
    (
        "requested_format",
        "Region 1: a brown dog | Score: 0.9\nRegion 2: 2 apples on a plate | Score: 0.4\nRegion 3: sky | Score: 0",
        3,
        [0.9, 0.4, 0.0],
    ),
    ("labels_and_boxes_inline", "Region 1 (cat): 0.8, Region 2 [10, 20, 30, 40]: -0.3", 2, [0.8, -0.3]),
    ("missing_region", "Region 1: 0.5\nRegion 3: -0.5", 3, [0.5, None, -0.5]),
    ("duplicate_last_wins", "Region 1: 0.5\nRegion 2: 0.1\nRegion 1: -0.9", 2, [-0.9, 0.1]),
    ("ids_out_of_range_ignored", "Region 0: 1\nRegion 1: 0.3\nRegion 4: 1\nRegion 99: -1", 3, [0.3, None, None]),
    ("any_order", "Region 3: 0.3\nRegion 1: 0.1\nRegion 2: 0.2", 3, [0.1, 0.2, 0.3]),
    (
        "markdown_headings",
        "### Region 2\n- **Object:** dog\n- **Score:** 0.3\n\n### Region 1\n- **Object:** cat\n- **Score:** 0.6",
        2,
        [0.6, 0.3],
    ),
    (
        "overall_after_blocks_not_a_region",
        "Region ID: 1\nObject: cat\nScore: 0.6\n\nRegion ID: 2\nObject: dog\n\nOverall score: 0.9",
        2,
        [0.6, None],
    ),
    (
        "json_regions",
        '```json\n{"regions": [{"id": 1, "object": "cat", "bbox": [1, 2, 30, 40], "score": -0.3},\n'
        ' {"id": 3, "object": "dog", "score": 0.9}]}\n```',
        3,
        [-0.3, None, 0.9],
    ),
    ("json_list_of_objects", '[{"region": 2, "score": 0.25}, {"region": 1, "score": "0.75"}]', 2, [0.75, 0.25]),
    ("json_keyed_by_number", '{"1": 0.5, "2": -1}', 2, [0.5, -1.0]),
    ("json_keyed_by_region", '{"region_1": 0.5, "Region 2": -0.25}', 2, [0.5, -0.25]),
    ("bare_list", "[0.5, -0.2, 1]", 3, [0.5, -0.2, 1.0]),
    ("bare_list_fenced_short", "```json\n[0.5, -0.2]\n```", 3, [0.5, -0.2, None]),
    ("bare_list_of_coordinates_rejected", "[12, 30, 400, 500]", 4, [None, None, None, None]),
    (
        "table",
        "| Region | Object | Score |\n|---|---|---|\n| 1 | cat | 0.9 |\n| Region 2 | dog | **-0.4** |",
        2,
        [0.9, -0.4],
    ),
    ("unicode_minus_signs", "Region 1: \u22120.5\nRegion 2: \u20130.25\nRegion 3: \u20111", 3, [-0.5, -0.25, -1.0]),
    ("decimal_comma", "Region 1: 0,5\nRegion 2: -1,0", 2, [0.5, -1.0]),
    ("out_of_range_clamped", "Region 1: 3\nRegion 2: -7.5", 2, [1.0, -1.0]),
    ("fraction_rejected", "Region 1: 7/10\nRegion 2: 0.2", 2, [None, 0.2]),
    ("coordinates_are_not_a_score", "Region 1: 10, 20, 30, 40", 1, [None]),
    ("concise", "region 1 score 0.5 region 2 score -1", 2, [0.5, -1.0]),
    (
        "description_mentions_other_region",
        "Region 1: the cat, overlapping region 2 | Score: 0.7\nRegion 2: the sofa | Score: 0.1",
        2,
        [0.7, 0.1],
    ),
    ("think_closed_without_answer", "<think>Region 1: 0.9</think>", 1, [None]),
    ("no_regions", "The image looks fine.", 2, [None, None]),
    ("zero_regions", "Region 1: 0.5", 0, []),
]


@pytest.mark.parametrize(
    ("text", "num_regions", "expected"), [c[1:] for c in REGION_CASES], ids=[c[0] for c in REGION_CASES]
)
def test_region_scores_table(text, num_regions, expected):
    assert parse_region_scores(text, num_regions) == expected


def test_region_detailed_reports_clamping():
    parses = parse_region_scores_detailed("Region 1: 3\nRegion 2: 0.5\nRegion 3: -1", 4)
    assert parses == [ScoreParse(1.0, 3.0), ScoreParse(0.5, 0.5), ScoreParse(-1.0, -1.0), None]
    assert [p.clamped for p in parses[:3]] == [True, False, False]


def test_negative_num_regions_raises():
    with pytest.raises(ValueError):
        parse_region_scores("Region 1: 0.5", -1)


BOX_CASES = [
    ("lines", "[10, 20, 110, 220]\n[0, 0, 50, 50]", [(10, 20, 110, 220), (0, 0, 50, 50)]),
    (
        "json_nested",
        '{"boxes": [[10, 20, 110, 220], [30.5, 40, 60, 80.25]]}',
        [(10, 20, 110, 220), (30.5, 40, 60, 80.25)],
    ),
    ("corner_tags", "<box>(10,20),(110,220)</box> and <box>(1, 2), (3, 4)</box>", [(10, 20, 110, 220), (1, 2, 3, 4)]),
    ("qwen_tags", "<|box_start|>(10,20),(110,220)<|box_end|>", [(10, 20, 110, 220)]),
    ("space_separated_tag", "<box>10 20 110 220</box>", [(10, 20, 110, 220)]),
    ("parentheses", "(10, 20, 110, 220)", [(10, 20, 110, 220)]),
    ("concise", "box 10 20 110 220 box 5 5 9 9", [(10, 20, 110, 220), (5, 5, 9, 9)]),
    ("clipped", "[-15, -5, 300, 999]", [(0, 0, 256, 240)]),
    ("unicode_minus_clipped", "[\u221215, 0, 30, 40]", [(0, 0, 30, 40)]),
    ("degenerate_dropped", "[10, 10, 10, 50]\n[10, 10, 50, 10]\n[5, 5, 5.5, 40]", []),
    ("inverted_dropped", "[100, 100, 50, 50]", []),
    ("outside_dropped", "[300, 10, 400, 50]\n[10, 250, 50, 300]", []),
    ("normalised_coordinates_dropped", "[0.1, 0.2, 0.5, 0.6]", []),
    ("none", "none", []),
    ("after_reasoning", "<think>maybe [0, 0, 5, 5]</think>\n[10, 20, 30, 40]", [(10, 20, 30, 40)]),
    (
        "prose",
        "There is a cat at [12, 30, 100, 120], and another at [150, 10, 250, 90].",
        [(12, 30, 100, 120), (150, 10, 250, 90)],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BOX_CASES], ids=[c[0] for c in BOX_CASES])
def test_parse_boxes(text, expected):
    assert parse_boxes(text, (256, 240)) == [tuple(float(c) for c in box) for box in expected]


@pytest.mark.parametrize("size", [(0, 10), (10, -1)])
def test_parse_boxes_rejects_bad_image_size(size):
    with pytest.raises(ValueError):
        parse_boxes("[1, 2, 3, 4]", size)


def test_docstring_examples():
    assert doctest.testmod(parsing).failed == 0
