import numpy as np
import pytest
import torch
from PIL import Image

from trl_srum.judge import parse_global_score, parse_region_scores
from trl_srum.models.bagel.tiny import tiny_bagel_model
from trl_srum.prompt_text import parse_boxes
from trl_srum.shapes import alter, describe, detect, is_heldout, parse_prompt, render, render_scene, sample_specs
from trl_srum.shapes.evaluation import (
    evaluation_specs,
    generation_accuracy,
    ranking_auc,
    understanding_accuracy,
    vqa_accuracy,
)
from trl_srum.shapes.oracle import Detection, Reading, evaluate
from trl_srum.shapes.tasks import (
    TASK_KINDS,
    detection_at,
    global_score_label,
    oracle_judgement,
    region_score_label,
    scene_questions,
    shown_spec,
)


SPEC = {
    "objects": [{"shape": "circle", "color": "red", "count": 2}, {"shape": "square", "color": "blue", "count": 1}],
    "relation": {"type": "left_of", "a": 0, "b": 1},
}


def test_global_label_grades_correct_near_miss_and_wrong():
    image = render(SPEC, size=64, seed=3)
    reading = detect(image)
    assert global_score_label(evaluate(image, SPEC)) == 1.0
    one_error = alter(SPEC, "count", 0)
    assert global_score_label(evaluate(image, one_error)) == -0.5
    two_errors = {
        "objects": [
            {"shape": "triangle", "color": "green", "count": 1},
            {"shape": "square", "color": "red", "count": 3},
        ],
        "relation": None,
    }
    assert global_score_label(evaluate(image, two_errors)) == -1.0
    assert len(reading.detections) == 3


def test_region_label_rewards_prompt_objects_and_penalises_others():
    red_circle = Detection("red", "circle", (0, 0, 10, 10), 80)
    assert region_score_label(red_circle, SPEC) == 1.0
    assert region_score_label(Detection("red", "triangle", (0, 0, 10, 10), 40), SPEC) == -0.5
    assert region_score_label(Detection("green", "triangle", (0, 0, 10, 10), 40), SPEC) == -1.0
    assert region_score_label(None, SPEC) == 0.0


def test_scene_questions_are_labelled_by_what_the_image_shows():
    image, objects = render_scene(SPEC, size=64, seed=5)
    reading = detect(image)
    rng = np.random.default_rng(0)
    right = {q.kind: q for q in scene_questions(reading, SPEC, 64, rng)}
    assert set(right) == set(TASK_KINDS)
    assert right["layout_match"].answer == "yes"
    assert parse_global_score(right["layout_score"].answer) == 1.0
    # The prompt is written into every self-judge question; the VQA kinds ask about the image alone.
    judge_kinds = ("layout_match", "layout_score", "region_match", "region_relevant", "region_score")
    assert all(describe(SPEC) in right[kind].question for kind in judge_kinds)
    assert all(describe(SPEC) not in right[kind].question for kind in ("exists", "count", "color", "relation"))

    wrong = {q.kind: q for q in scene_questions(reading, alter(SPEC, "swap_colors", 0), 64, rng)}
    assert wrong["layout_match"].answer == "no"
    assert parse_global_score(wrong["layout_score"].answer) < 0

    # Region scores parse back, one per listed box, and match the oracle's labels.
    question = right["region_score"].question
    num_boxes = question.count(" box ")
    scores = parse_region_scores(right["region_score"].answer, num_boxes)
    assert len(scores) == num_boxes and all(s in (-1.0, -0.5, 0.0, 0.5, 1.0) for s in scores)

    # Grounding answers are the drawn boxes of the phrase's object.
    phrase = right["grounding"].question.split("phrase ")[-1]
    target = parse_prompt(phrase)["objects"][0]
    expected = sorted(
        tuple(o["box"]) for o in objects if (o["color"], o["shape"]) == (target["color"], target["shape"])
    )
    found = sorted(parse_boxes(right["grounding"].answer, (64, 64)))
    assert len(found) == len(expected)
    for a, b in zip(found, expected, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 2


def test_shown_spec_reads_back_what_was_drawn():
    rng = np.random.default_rng(0)
    for category in ("single_object", "counting", "colour_binding", "position"):
        for spec in sample_specs(category, 4, seed=3):
            reading = detect(render(spec, size=64, seed=1))
            shown = shown_spec(reading, rng)
            assert shown is not None
            # Whatever relation it names holds, and the image is correct for it (so "yes" is a true label).
            assert evaluate(render(spec, size=64, seed=1), shown)["correct"]
            assert sorted((o["color"], o["shape"], o["count"]) for o in shown["objects"]) == sorted(
                (o["color"], o["shape"], o["count"]) for o in spec["objects"]
            )


def test_shown_spec_gives_up_on_what_no_spec_can_say():
    rng = np.random.default_rng(0)
    assert shown_spec(detect(Image.new("RGB", (64, 64), (0, 0, 0))), rng) is None  # wrong background
    blank = render({"objects": [{"shape": "circle", "color": "red", "count": 1}], "relation": None}, size=64, seed=0)
    empty = Image.new("RGB", blank.size, blank.getpixel((0, 0)))
    assert shown_spec(detect(empty), rng) is None  # nothing drawn
    unknown = Reading(True, (Detection("red", "unknown", (0, 0, 9, 9), 60),))
    assert shown_spec(unknown, rng) is None
    five = Reading(True, tuple(Detection("red", "circle", (10 * i, 0, 10 * i + 8, 8), 50) for i in range(5)))
    assert shown_spec(five, rng) is None  # counts stop at four


def test_oracle_judgement_scores_like_the_taught_labels():
    image, objects = render_scene(SPEC, size=64, seed=5)
    boxes = [o["box"] for o in objects] + [[0, 0, 4, 4]]
    global_score, region_scores = oracle_judgement(image, SPEC, boxes)
    assert global_score == 1.0
    assert region_scores == [1.0] * len(objects) + [0.0]  # prompt objects, then background
    swapped = alter(SPEC, "swap_colors", 0)
    global_score, region_scores = oracle_judgement(image, swapped, boxes[:1])
    assert global_score < 0 and region_scores[0] < 1.0


def test_detection_at_needs_a_tight_box():
    image = render(SPEC, size=64, seed=5)
    reading = detect(image)
    box = reading.detections[0].box
    assert detection_at(box, reading) == reading.detections[0]
    assert detection_at((0, 0, 2, 2), reading) is None


class OracleJudge(type(tiny_bagel_model())):
    """The tiny BAGEL with its yes/no answers replaced by the oracle's: understanding_accuracy must read ~1."""

    def score_answers(self, image, questions, answers):
        says_yes = [evaluate(image, parse_prompt(q.split("prompt ")[-1]))["correct"] for q in questions]
        return torch.tensor([[0.0, -9.0] if yes else [-9.0, 0.0] for yes in says_yes])


def test_understanding_accuracy_pairs_true_and_altered_prompts():
    specs = sample_specs("position", 12, seed=0, split="heldout")
    oracle = tiny_bagel_model(seed=0)
    oracle.__class__ = OracleJudge
    assert understanding_accuracy(oracle, specs, style="concise") >= 0.95
    # A model that always says yes is right on exactly the true half.
    yes_model = tiny_bagel_model(seed=0)
    yes_model.score_answers = lambda image, questions, answers: torch.tensor([[0.0, -1.0]] * len(questions))
    assert understanding_accuracy(yes_model, specs, style="concise") == pytest.approx(0.5)


def test_generation_accuracy_is_deterministic_and_complete():
    model = tiny_bagel_model(seed=0)
    specs = {"single_object": sample_specs("single_object", 2, 0, split="heldout")}
    table, samples = generation_accuracy(model, specs, seeds=[0, 1], image_size=32, num_timesteps=3, batch_size=3)
    assert len(samples) == 4 and table["overall"]["n"] == 4
    _, again = generation_accuracy(model, specs, seeds=[0, 1], image_size=32, num_timesteps=3, batch_size=4)
    assert [np.asarray(s.image).tobytes() for s in samples] == [np.asarray(s.image).tobytes() for s in again]
    assert [s.correct for s in samples] == [evaluate(s.image, parse_prompt(s.prompt))["correct"] for s in samples]


def test_evaluation_specs_come_from_the_held_out_split_only():
    specs = evaluation_specs(10)
    assert set(specs) == {"single_object", "two_objects", "counting", "colour_binding", "position", "complex"}
    assert len(specs["single_object"]) == 4  # only four held-out single objects exist
    assert len(specs["two_objects"]) == 8 and len(specs["complex"]) == 10
    assert all(is_heldout(spec) for group in specs.values() for spec in group)


class AlwaysYes:
    """A judge that never looks: every answer is "yes"."""

    def answer_questions(self, images, questions, **kwargs):
        return ["yes"] * len(questions)


def test_vqa_probe_scores_a_blind_judge_at_or_below_the_majority_answer():
    images = [render(spec, size=64, seed=i) for i, spec in enumerate(sample_specs("position", 12, seed=0))]
    table = vqa_accuracy(AlwaysYes(), images)
    assert set(table) <= {"exists", "count", "color", "relation"} and {"exists", "relation"} <= set(table)
    assert all(row["accuracy"] <= row["majority"] + 1e-9 for row in table.values())
    # "yes" is right exactly as often as the label is yes; the majority is the larger of yes and no.
    exists = table["exists"]
    assert exists["majority"] == pytest.approx(max(exists["accuracy"], 1 - exists["accuracy"]))
    assert table["count"]["accuracy"] == 0.0  # counts are digits


def test_ranking_auc():
    assert ranking_auc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert ranking_auc([0, 1, 2, 3], [True, True, False, False]) == 0.0
    assert ranking_auc([1, 1, 1, 1], [True, False, True, False]) == 0.5
    assert np.isnan(ranking_auc([1, 2], [True, True]))
