"""What a shapes-world model gets wrong, and whether its own judge can tell: the measurements behind issue 15's rungs.

- `drawing_errors`: the kinds of error in one image, from the oracle's verdict — compositional (`count`, `binding`,
  `relation`, `missing`), an `extra` well-drawn object, or a drawing error (`malformed`: an object the oracle reads as
  no valid shape or colour; `background`).
- `valid_object_fraction`: the share of drawn objects the oracle reads as some valid shape and colour.
- `best_of_k_accuracy`: the accuracy of picking, per prompt, the candidate a judge scores highest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .oracle import Reading
from .spec import COLORS, SHAPES, validate_spec


COMPOSITIONAL = ("count", "binding", "relation", "missing")
DRAWING = ("malformed", "background")
ERROR_KINDS = (*COMPOSITIONAL, "extra", *DRAWING)


def drawing_errors(verdict: Mapping[str, Any], spec: Mapping[str, Any]) -> set[str]:
    """The kinds of error (`ERROR_KINDS`) in an image the oracle judged `verdict` against `spec`; empty if correct.

    `binding`: a well-drawn extra object has a colour of the prompt and a shape of the prompt in a pairing the prompt
    does not ask for (colours swapped, or one colour painted on both). `missing`: a prompt object is not drawn at all
    (and no rebinding explains it); `count`: drawn, but a wrong number of times. `extra`: any other well-drawn object
    the prompt does not ask for.
    """
    spec = validate_spec(spec)
    kinds: set[str] = set()
    if not verdict["background_ok"]:
        kinds.add("background")
    colours = {obj["color"] for obj in spec["objects"]}
    shapes = {obj["shape"] for obj in spec["objects"]}
    rebound = False
    for extra in verdict["extra"]:
        if extra["color"] not in COLORS or extra["shape"] not in SHAPES:
            kinds.add("malformed")
        elif len(spec["objects"]) > 1 and extra["color"] in colours and extra["shape"] in shapes:
            kinds.add("binding")
            rebound = True
        else:
            kinds.add("extra")
    for obj in verdict["objects"]:
        if obj["found"] == 0 and not rebound:
            kinds.add("missing")
        elif obj["found"] != obj["expected"] and obj["found"] > 0:
            kinds.add("count")
    if verdict["relation"] is not None and not verdict["relation"]["holds"]:
        kinds.add("relation")
    return kinds


def error_breakdown(errors: Iterable[set[str]]) -> dict[str, Any]:
    """Over the wrong images (non-empty error sets): how many, the share with each kind, and the share whose errors
    are all compositional (every object well drawn, no extra object)."""
    wrong = [kinds for kinds in errors if kinds]
    if not wrong:
        return {"wrong": 0}
    counts = Counter(kind for kinds in wrong for kind in kinds)
    return {
        "wrong": len(wrong),
        "share_with": {kind: counts[kind] / len(wrong) for kind in ERROR_KINDS},
        "compositional_only": sum(kinds <= set(COMPOSITIONAL) for kinds in wrong) / len(wrong),
        "any_drawing_error": sum(bool(kinds & set(DRAWING)) for kinds in wrong) / len(wrong),
    }


def valid_object_fraction(readings: Iterable[Reading]) -> tuple[float, int]:
    """The share of drawn objects (detections) read as a valid shape and colour, and how many objects there were."""
    valid = total = 0
    for reading in readings:
        for detection in reading.detections:
            total += 1
            valid += detection.color in COLORS and detection.shape in SHAPES
    return (valid / total if total else float("nan")), total


def best_of_k_accuracy(correct: Sequence[Sequence[bool]], scores: Sequence[Sequence[float]]) -> float:
    """Accuracy when each prompt keeps its highest-scoring candidate (ties: the first); rows are prompts."""
    correct_array, score_array = np.asarray(correct, dtype=bool), np.asarray(scores, dtype=float)
    if correct_array.shape != score_array.shape or correct_array.ndim != 2:
        raise ValueError(
            f"correct and scores must both be (prompts, candidates), got {correct_array.shape} and {score_array.shape}"
        )
    # A missing score (NaN) never wins.
    picked = np.argmax(np.where(np.isnan(score_array), -np.inf, score_array), axis=1)
    return float(correct_array[np.arange(len(picked)), picked].mean())
