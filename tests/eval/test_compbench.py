"""The `compbench-vlm` protocol: its rubric, the 0-100 parser (examples and fuzzing), retries, aggregation, and the
real transformers judge end to end on a tiny random Qwen2.5-VL."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from trl_srum.eval import EvalConfig, evaluate_folder
from trl_srum.eval.compbench import SCORE_BANDS, CompBenchProtocol, parse_compbench_score, rubric_prompt
from trl_srum.eval.protocols import EvalImage
from trl_srum.eval.scoring import aggregate
from trl_srum.eval.vlm import TransformersVLM
from trl_srum.models.tiny_judges import save_tiny, tiny_vlm_judge
from trl_srum.rollout.prompts import PromptRecord

from .utils import ScriptedJudge, random_images, write_compbench_prompts


COMMON = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow]}


# ---------------------------------------------------------------------------------------------------------- rubric
def test_the_rubric_names_the_prompt_every_band_and_the_answer_format():
    text = rubric_prompt("a red cube on a blue sphere")
    assert '"a red cube on a blue sphere"' in text
    assert [band[:2] for band in SCORE_BANDS] == [(81, 100), (61, 80), (41, 60), (21, 40), (1, 20)]
    for low, high, meaning in SCORE_BANDS:
        assert f"- {low}-{high}: {meaning}" in text
    assert '{"score": <integer from 0 to 100>, "explanation": "<one sentence>"}' in text
    # an answer in the requested format reads back
    assert parse_compbench_score(json.dumps({"score": 85, "explanation": "the cube is red"})) == 85


# ---------------------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"score": 85, "explanation": "good"}', 85),
        ('```json\n{"score": 72, "explanation": "ok"}\n```', 72),
        ('{"score": "64", "explanation": "a score of 90 would need a blue sphere"}', 64),
        ("<think>It could score: 20 because ... no, better.</think>\n" + '{"score": 91}', 91),
        ("<think>first guess score: 30\nFinal answer: 55", 55),
        ("Score: 77\nExplanation: the cube is there.", 77),
        ("**Score:** 88.5", 88.5),
        ("Final score - 40", 40),
        ("The rating is 66.", 66),
        ("Score:\n93", 93),
        ("  81  ", 81),
        ("85/100", 85),
        ("85%", 85),
        ('{"score": 100}', 100),
        ('{"score": 0}', 0),
        ('{"score": 3}\n{"score": 60}', 60),  # a revised answer: the last one counts
        ("Score: 8/10", None),  # another scale
        ('{"score": 120}', None),  # out of range
        ("Score: -5", None),
        ("score \u22125", None),  # a unicode minus sign
        ("The image shows a red cube.", None),
        ("", None),
    ],
)
def test_parse_examples(answer, expected):
    assert parse_compbench_score(answer) == expected


def test_reasoning_cut_short_still_reads_its_final_answer():
    # the same rule as the self-judge's parser: with an unclosed <think>, the text from the last final-answer line
    assert parse_compbench_score("<think>maybe score: 12\nFinal answer:\nScore: 74") == 74


scores = st.one_of(st.integers(0, 100), st.floats(0, 100, allow_nan=False).map(lambda v: round(v, 2)))
words = st.text(alphabet="abcdefghij klmnopqrst,.!\n", max_size=60)


def well_formed(score: float, explanation: str, style: int, decoy: int) -> str:
    body = json.dumps({"score": score, "explanation": explanation})
    return [
        body,
        f"```json\n{body}\n```",
        f"<think>Perhaps score: {decoy}. {explanation}</think>\n{body}",
        f"Score: {score}\nExplanation: {explanation}",
        f"<think>{explanation} score: {decoy}</think>Score: {score}",
        f"{score}",
    ][style]


@settings(max_examples=600, **COMMON)
@given(scores, words, st.integers(0, 5), st.integers(0, 100))
def test_every_well_formed_answer_reads_back_exactly(score, explanation, style, decoy):
    assert parse_compbench_score(well_formed(score, explanation, style, decoy)) == pytest.approx(score)


@settings(max_examples=300, **COMMON)
@given(
    st.one_of(st.floats(100.01, 1e6, allow_nan=False), st.floats(-1e6, -0.01, allow_nan=False)).map(
        lambda v: round(v, 2)
    ),
    words,
    st.integers(0, 4),
    st.integers(0, 100),
)
def test_an_out_of_range_score_is_missing_not_clamped(score, explanation, style, decoy):
    assert parse_compbench_score(well_formed(score, explanation, style, decoy)) is None


@settings(max_examples=1500, **COMMON)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                ["score", "Score:", '"score":', "{", "}", "```", "<think>", "</think>", "/", "%", "\n", " ", "-"]
            ),
            st.integers(-500, 500).map(str),
            st.text(max_size=12),
        ),
        max_size=14,
    ).map("".join)
)
def test_any_text_parses_to_none_or_a_score_in_range(text):
    score = parse_compbench_score(text)
    assert score is None or 0.0 <= score <= 100.0


@settings(max_examples=300, **COMMON)
@given(words)
def test_an_answer_without_a_number_is_missing(text):
    assert parse_compbench_score(text) is None


# ---------------------------------------------------------------------------------------------------------- retries
def images_of(tmp_path, records, per_prompt=1):
    folder = random_images(tmp_path / "images", [r.prompt_id for r in records], per_prompt, seed=0)
    return [EvalImage(r, k, folder / r.prompt_id / f"{k:04d}.png") for r in records for k in range(per_prompt)]


def test_unparsable_answers_are_retried_sampled_then_recorded_as_missing(tmp_path):
    records = [PromptRecord("1", "a red cube", "color"), PromptRecord("2", "a blue ball", "color")]
    judge = ScriptedJudge({"a red cube": ["no idea", '{"score": 70}'], "a blue ball": ["no", "still no", "never"]})
    protocol = CompBenchProtocol(EvalConfig(judge_retries=2, judge_retry_temperature=0.9), judge_model=judge)
    first, second = protocol.judge(images_of(tmp_path, records), device=None)
    assert (first.score, first.attempts, first.output) == (70, 2, 'no idea\n---\n{"score": 70}')
    assert (second.score, second.attempts) == (None, 3)
    # the first answers were asked together, greedily; each retry alone, sampled, from a seed of its own
    assert judge.calls[0] == (2, False, None, None)
    retries = judge.calls[1:]
    assert [(n, sampled, temperature) for n, sampled, temperature, _ in retries] == [(1, True, 0.9)] * 3
    assert len({seed for *_, seed in retries}) == 3
    # the same images judged again draw the same retries
    again = ScriptedJudge(judge.script)
    CompBenchProtocol(EvalConfig(judge_retries=2, judge_retry_temperature=0.9), judge_model=again).judge(
        images_of(tmp_path, records), device=None
    )
    assert again.calls == judge.calls


# ------------------------------------------------------------------------------------------------------- aggregation
def rows_of(scores_by_category):
    rows = []
    for category, scores in scores_by_category.items():
        for index, score in enumerate(scores):
            rows.append({"prompt_id": f"{category}-{index}", "category": category, "score": score})
    return rows


PAPER_CATEGORIES = {
    "3d_spatial": [80, 90],
    "color": [100, None],
    "complex": [60, 70],
    "complex_action": [50],
    "complex_spatial": [None, 90],
    "non-spatial": [85],
    "numeracy": [40, 60],
    "shape": [75],
    "spatial": [65],
    "texture": [95, 85],
}


def test_the_official_aggregation_reproduces_the_papers_rule_by_hand():
    table = aggregate(rows_of(PAPER_CATEGORIES), CompBenchProtocol(EvalConfig(aggregation="official")), "official")
    # -1 for each missing judgement, averaged in (as the SRUM evaluation script did)
    assert table.categories["color"].score == pytest.approx((100 - 1) / 2)
    assert table.categories["complex_spatial"].score == pytest.approx((-1 + 90) / 2)
    complex_ = (65 + 50 + 44.5) / 3  # complex, complex_action, complex_spatial
    assert table.groups == {"Complex": pytest.approx(complex_)}
    base = [85, 49.5, 85, 50, 75, 65, 90]  # 3d_spatial, color, non-spatial, numeracy, shape, spatial, texture
    assert table.overall == pytest.approx((sum(base) + complex_) / 8)
    assert table.categories["color"].missing == 1 and table.categories["color"].images == 2
    assert table.rule == (
        "unweighted mean of 3d_spatial, color, non-spatial, numeracy, shape, spatial, texture, "
        "Complex (mean of complex, complex_action, complex_spatial)"
    )


def test_by_default_missing_judgements_are_left_out_and_reported():
    table = aggregate(rows_of(PAPER_CATEGORIES), CompBenchProtocol(EvalConfig()), "exclude_missing")
    assert table.categories["color"].score == 100 and table.categories["color"].missing == 1
    assert table.categories["complex_spatial"].score == 90
    complex_ = (65 + 50 + 90) / 3
    assert table.groups["Complex"] == pytest.approx(complex_)
    assert table.overall == pytest.approx((85 + 100 + 85 + 50 + 75 + 65 + 90 + complex_) / 8)
    # a category without any judged image has no score, and then neither has the overall number
    table = aggregate(
        rows_of({"color": [None, None], "shape": [50]}), CompBenchProtocol(EvalConfig()), "exclude_missing"
    )
    assert table.categories["color"].score is None and table.overall is None


def test_categories_outside_the_papers_set_weigh_as_base_categories():
    protocol = CompBenchProtocol(EvalConfig())
    table = aggregate(rows_of({"animals": [10], "complex": [30], "complex_action": [50]}), protocol, "exclude_missing")
    assert table.overall == pytest.approx((10 + (30 + 50) / 2) / 2)
    assert table.rule == "unweighted mean of animals, Complex (mean of complex, complex_action)"


def test_official_aggregation_is_only_for_compbench():
    from trl_srum.eval.geneval import GenEvalProtocol

    with pytest.raises(ValueError, match="geneval.*official"):
        GenEvalProtocol(EvalConfig(protocol="geneval", aggregation="official"))
    with pytest.raises(ValueError, match="aggregation='mean'"):
        EvalConfig(aggregation="mean")


# ---------------------------------------------------------------------------------------------------------- real judge
@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("judge") / "qwen2.5-vl-tiny", *tiny_vlm_judge(seed=0))


def test_the_transformers_judge_samples_from_its_seed(tiny_judge_dir):
    judge = TransformersVLM(str(tiny_judge_dir), max_new_tokens=6)
    images = [Image.new("RGB", (40, 48), "red"), Image.new("RGB", (64, 32), "blue")]
    greedy = judge.answer(images, ["is it red?", "what colour is this object?"])
    assert greedy == [
        judge.answer([image], [q])[0] for image, q in zip(images, ["is it red?", "what colour is this object?"])
    ]
    first = judge.answer(images[:1], ["is it red?"], do_sample=True, temperature=1.0, seed=3)
    assert first == judge.answer(images[:1], ["is it red?"], do_sample=True, temperature=1.0, seed=3)
    draws = {judge.answer(images[:1], ["is it red?"], do_sample=True, temperature=1.0, seed=s)[0] for s in range(4)}
    assert len(draws) > 1


def test_a_tiny_random_qwen_judge_end_to_end_records_missing_judgements(tmp_path, tiny_judge_dir):
    prompts = write_compbench_prompts(tmp_path / "prompts.json")
    images = random_images(tmp_path / "images", [str(p["Question_id"]) for p in prompts], per_prompt=2, seed=1)
    settings_ = {
        "protocol": "compbench-vlm",
        "prompts": str(tmp_path / "prompts.json"),
        "images_dir": str(images),
        "judge_model": str(tiny_judge_dir),
        "judge_max_new_tokens": 8,
        "judge_retries": 1,
        "judge_batch_size": 3,
    }
    results = evaluate_folder(EvalConfig(eval_dir=str(tmp_path / "run"), **settings_))
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    # a random model writes gibberish: every answer fails, is retried once (sampled) and is recorded as missing
    assert summary["num_images"] == summary["missing_judgements"] == 2 * len(prompts)
    assert all(row["score"] is None and row["attempts"] == 2 and "\n---\n" in row["output"] for row in results.rows)
    assert summary["overall"] is None and summary["judge"]["judge_model"] == str(tiny_judge_dir)
    assert "| **overall** | **n/a** |" in (tmp_path / "run" / "results.md").read_text()
    # the official aggregation counts them as -1, as the SRUM evaluation script did
    official = evaluate_folder(EvalConfig(eval_dir=str(tmp_path / "run"), aggregation="official", **settings_))
    assert official.overall == pytest.approx(-1.0)
    assert official.rows == results.rows  # judged once: the rerun reads the judgements back


def test_prompts_are_required_and_checked(tmp_path):
    with pytest.raises(ValueError, match="compbench-vlm needs prompts"):
        CompBenchProtocol(EvalConfig()).load_prompts()
    (tmp_path / "bad.json").write_text(json.dumps([{"Question": "a cat", "Question_id": "../x"}]))
    with pytest.raises(ValueError, match="cannot name an image folder"):
        evaluate_folder(EvalConfig(prompts=str(tmp_path / "bad.json"), images_dir=str(tmp_path)))
