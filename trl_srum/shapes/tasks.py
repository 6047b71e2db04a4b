"""Labelled questions about a scene: the supervision a tiny judge is pretrained on, and its understanding test.

Every label comes from the oracle's reading of the image (`detect`), so the same code labels clean renders,
degraded renders and images a generator drew (the oracle plays the part that human labels play for a real VLM). The
questions are the self-judge's own concise prompts (`trl_srum.judge.prompts`), so a model pretrained on them can judge
its own images in stage 1:

| kind | question | answer |
|---|---|---|
| `layout_match` | `global_probability_question` | yes iff the image is correct for the prompt |
| `layout_score` | `global_judge_prompt` | `global_score_label` |
| `region_match` | `region_probability_question` | yes iff the region shows a prompt object (colour and shape) |
| `region_relevant` | `region_relevance_question` | yes iff the box frames a drawn object (IoU >= 0.5) |
| `region_score` | `region_judge_prompt` | `region_score_label` of each region |
| `grounding` | `grounding_prompt` | the boxes of the phrase's object |

and four plain VQA questions that teach the attribute binding those judgements rest on:

| kind | question | answer |
|---|---|---|
| `exists` | "is there a red circle" (an object of the scene, or one differing in colour or shape) | yes / no |
| `count` | "how many red circles" | the number, as a digit |
| `color` | "what color is the circle" (when exactly one circle is drawn) | the colour |
| `relation` | "is the red circle to the left of the blue square" | yes / no, by GenEval's rule |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..judge import prompts as judge_prompts
from ..prompt_text import grounding_answer, grounding_prompt
from .geometry import relations, union_box
from .oracle import Detection, Reading, detect, judge
from .spec import (
    COLORS,
    MAX_COUNT,
    MAX_INSTANCES,
    MAX_OBJECTS,
    RELATIONS,
    SHAPES,
    describe,
    relation_phrase,
    validate_spec,
)


STYLE = "concise"
TASK_KINDS: tuple[str, ...] = (
    "layout_match",
    "layout_score",
    "region_match",
    "region_relevant",
    "region_score",
    "grounding",
    "exists",
    "count",
    "color",
    "relation",
)
# Words of the VQA questions beyond the prompts' own vocabulary.
QUESTION_WORDS: tuple[str, ...] = ("is", "there", "how", "many", "what", "color")


@dataclass(frozen=True)
class LabelledQuestion:
    kind: str
    question: str
    answer: str


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union if union > 0 else 0.0


def global_score_label(verdict: Mapping[str, Any]) -> float:
    """1 for a correct image, -0.5 for a near miss (exactly one clause wrong), -1 otherwise."""
    if verdict["correct"]:
        return 1.0
    errors = sum(not obj["count_ok"] for obj in verdict["objects"]) + len(verdict["extra"])
    errors += (verdict["relation"] is not None and not verdict["relation"]["holds"]) + 2 * (
        not verdict["background_ok"]
    )
    return -0.5 if errors == 1 else -1.0


def region_score_label(detection: Detection | None, spec: Mapping[str, Any]) -> float:
    """1 if the region shows an object of the prompt (colour and shape), -0.5 if it gets one of the two, -1 if it
    shows something the prompt does not ask for, 0 for background."""
    if detection is None:
        return 0.0
    objects = validate_spec(spec)["objects"]
    if any(obj["color"] == detection.color and obj["shape"] == detection.shape for obj in objects):
        return 1.0
    if any(obj["color"] == detection.color or obj["shape"] == detection.shape for obj in objects):
        return -0.5
    return -1.0


def oracle_judgement(
    image: Any, spec: Mapping[str, Any], boxes: Sequence[Sequence[float]]
) -> tuple[float, list[float]]:
    """The scores a perfect self-judge would give: the labels the tiny judge is pretrained on, read from the image.

    Returns the global score (`global_score_label`) and one `region_score_label` per box. Used only to measure how
    far SRUM could go with perfect rewards; stages 1 and 2 never call the oracle.
    """
    reading = detect(image)
    return global_score_label(judge(reading, spec)), [
        region_score_label(detection_at(b, reading), spec) for b in boxes
    ]


def detection_at(box: Sequence[float], reading: Reading) -> Detection | None:
    """The drawn object a box frames (IoU >= 0.5), if any."""
    best = max(reading.detections, key=lambda det: _iou(box, det.box), default=None)
    return best if best is not None and _iou(box, best.box) >= 0.5 else None


def candidate_boxes(reading: Reading, size: int, rng: np.random.Generator, max_boxes: int = 3) -> list[tuple]:
    """Region boxes like a proposer would give: detected objects with a little jitter, sometimes a background box."""
    boxes = []
    for det in reading.detections:
        jitter = rng.integers(-1, 2, size=4)
        x1, y1, x2, y2 = (int(c) + int(j) for c, j in zip(det.box, jitter, strict=True))
        boxes.append((max(0, x1), max(0, y1), min(size, max(x2, x1 + 2)), min(size, max(y2, y1 + 2))))
    if rng.random() < 0.3:
        side = int(rng.integers(6, size // 3))
        x, y = (int(v) for v in rng.integers(0, size - side, size=2))
        boxes.append((x, y, x + side, y + side))
    order = rng.permutation(len(boxes))[:max_boxes]
    return [boxes[i] for i in order]


def scene_questions(
    reading: Reading, spec: Mapping[str, Any], size: int, rng: np.random.Generator
) -> list[LabelledQuestion]:
    """One labelled question of every kind about an image (as read by the oracle) and a prompt spec; the VQA kinds
    are asked when the scene allows (e.g. `color` needs a shape drawn exactly once)."""
    spec = validate_spec(spec)
    prompt = describe(spec)
    image_size = (size, size)
    verdict = judge(reading, spec)
    questions = [
        LabelledQuestion(
            "layout_match",
            judge_prompts.global_probability_question(prompt, image_size, style=STYLE),
            "yes" if verdict["correct"] else "no",
        ),
        LabelledQuestion(
            "layout_score",
            judge_prompts.global_judge_prompt(prompt, image_size, style=STYLE),
            judge_prompts.global_answer(global_score_label(verdict), style=STYLE),
        ),
    ]
    boxes = candidate_boxes(reading, size, rng)
    if boxes:
        box = boxes[int(rng.integers(len(boxes)))]
        detection = detection_at(box, reading)
        questions += [
            LabelledQuestion(
                "region_match",
                judge_prompts.region_probability_question(prompt, box, image_size, style=STYLE),
                "yes" if region_score_label(detection, spec) == 1.0 else "no",
            ),
            LabelledQuestion(
                "region_relevant",
                judge_prompts.region_relevance_question(prompt, box, image_size, style=STYLE),
                "yes" if detection is not None else "no",
            ),
            LabelledQuestion(
                "region_score",
                judge_prompts.region_judge_prompt(prompt, boxes, image_size, style=STYLE),
                judge_prompts.region_answer(
                    [region_score_label(detection_at(b, reading), spec) for b in boxes], style=STYLE
                ),
            ),
        ]
    obj = spec["objects"][int(rng.integers(len(spec["objects"])))]
    phrase = describe({"objects": [obj], "relation": None})
    found = [det.box for det in reading.detections if (det.color, det.shape) == (obj["color"], obj["shape"])]
    questions.append(
        LabelledQuestion(
            "grounding",
            grounding_prompt(phrase, image_size, style=STYLE),
            grounding_answer(found, style=STYLE),
        )
    )
    return questions + vqa_questions(reading, rng)


def shown_spec(reading: Reading, rng: np.random.Generator) -> dict[str, Any] | None:
    """The spec an image shows, as the oracle reads it, or None when no spec can say it (wrong background, an unknown
    colour or shape, more objects, instances or copies of one kind than a spec holds).

    This is how the model's own samples are labelled for the judge: asked about what they show (yes) and about
    alterations of it (no), the answers stay balanced even when nearly every sample misses its prompt. When two single
    objects stand in some relation, the spec names one of the relations that hold, chosen by `rng`, or none.
    """
    if not reading.background_ok or not reading.detections:
        return None
    instances: dict[tuple[str, str], list[Detection]] = {}
    for det in reading.detections:
        if det.color not in COLORS or det.shape not in SHAPES:
            return None
        instances.setdefault((det.color, det.shape), []).append(det)
    counts = [len(group) for group in instances.values()]
    if len(instances) > MAX_OBJECTS or max(counts) > MAX_COUNT or sum(counts) > MAX_INSTANCES:
        return None
    objects = [{"shape": shape, "color": color, "count": len(group)} for (color, shape), group in instances.items()]
    relation = None
    if len(objects) == 2 and all(obj["count"] == 1 for obj in objects):
        held = sorted(relations(*(union_box(det.box for det in group) for group in instances.values())))
        choice = int(rng.integers(len(held) + 1))  # len(held): no relation
        if choice < len(held):
            relation = {"type": held[choice], "a": 0, "b": 1}
    return validate_spec({"objects": objects, "relation": relation})


def _atom(color: str, shape: str) -> str:
    return describe({"objects": [{"shape": shape, "color": color, "count": 1}], "relation": None})


def vqa_questions(reading: Reading, rng: np.random.Generator) -> list[LabelledQuestion]:
    """Plain questions about what an image shows (no prompt involved), as the oracle reads it."""
    drawn = {(det.color, det.shape) for det in reading.detections if det.shape in SHAPES}
    questions = []
    # exists: half about a drawn atom, half about one that differs from a drawn atom in colour or in shape
    atoms = sorted(drawn)
    if atoms and rng.random() < 0.5:
        color, shape = atoms[int(rng.integers(len(atoms)))]
    else:
        color, shape = COLORS[int(rng.integers(len(COLORS)))], SHAPES[int(rng.integers(len(SHAPES)))]
    questions.append(
        LabelledQuestion("exists", f"is there {_atom(color, shape)}", "yes" if (color, shape) in drawn else "no")
    )
    # count: how many of an atom (often a drawn one)
    color, shape = atoms[int(rng.integers(len(atoms)))] if atoms and rng.random() < 0.8 else (color, shape)
    number = sum((det.color, det.shape) == (color, shape) for det in reading.detections)
    plural = describe({"objects": [{"shape": shape, "color": color, "count": 2}], "relation": None}).split(" ", 1)[1]
    questions.append(LabelledQuestion("count", f"how many {plural}", str(number)))
    # color: of a shape drawn exactly once
    unique = [s for s in SHAPES if sum(det.shape == s for det in reading.detections) == 1]
    if unique:
        shape = unique[int(rng.integers(len(unique)))]
        color = next(det.color for det in reading.detections if det.shape == shape)
        questions.append(LabelledQuestion("color", f"what color is the {shape}", color))
    # relation: between two different drawn atoms, by the union boxes of their instances
    if len(atoms) >= 2:
        first, second = (atoms[i] for i in rng.choice(len(atoms), size=2, replace=False))
        boxes = [
            union_box(det.box for det in reading.detections if (det.color, det.shape) == atom)
            for atom in (first, second)
        ]
        kind = RELATIONS[int(rng.integers(len(RELATIONS)))]
        holds = kind in relations(*boxes)
        question = f"is the {' '.join(first)} {relation_phrase(kind)} the {' '.join(second)}"
        questions.append(LabelledQuestion("relation", question, "yes" if holds else "no"))
    return questions
