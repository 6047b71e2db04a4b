"""GenEval's rules on located objects, in one place for every judge that reads objects from an image.

Two judges use them: the shapes-world oracle (`trl_srum.shapes.oracle`), which reads objects exactly, and the `geneval`
evaluation protocol (`trl_srum.eval.geneval`), which reads them with a zero-shot detector. They differ in how a group
of instances is located (see `group_relations`), not in the rules themselves.

Coordinates are image pixels with x growing rightwards and y growing downwards, so "above" means a smaller y. Boxes are
``(x1, y1, x2, y2)``, end-exclusive.

Relative position (``relative_position`` in GenEval's evaluation script): with ``offset = centre_a - centre_b`` and
``dims`` the per-axis sizes of the two boxes, each offset component is shrunk towards zero by
``threshold * (dim_a + dim_b)`` (GenEval's threshold: 0.1), then divided by the length of the raw offset. "a left_of b"
holds when the x component is below -0.5, "right_of" when above 0.5, and likewise "above" / "below" for y. Both a
horizontal and a vertical relation can hold for a diagonal layout; none holds when the shrunk offset vanishes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np


Box = tuple[float, float, float, float]
POSITION_THRESHOLD = 0.1
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")


def union_box(boxes: Iterable[Sequence[float]]) -> Box:
    """The smallest box containing every given box."""
    arr = np.asarray(list(boxes), dtype=float).reshape(-1, 4)
    if len(arr) == 0:
        raise ValueError("union_box needs at least one box")
    return (arr[:, 0].min(), arr[:, 1].min(), arr[:, 2].max(), arr[:, 3].max())


def relation_components(box_a: Sequence[float], box_b: Sequence[float], threshold: float) -> tuple[float, float]:
    """GenEval's margin-reduced offset of a from b over the raw offset length, (dx, dy); (0, 0) for equal centres."""
    a, b = np.asarray(box_a, dtype=float), np.asarray(box_b, dtype=float)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    dims = (a[2:] - a[:2]) + (b[2:] - b[:2])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
    norm = float(np.linalg.norm(offset))
    if np.all(np.abs(revised) < 1e-3) or norm == 0:
        return 0.0, 0.0
    return float(revised[0] / norm), float(revised[1] / norm)


def relations(box_a: Sequence[float], box_b: Sequence[float], threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Every relation "a <R> b" that holds by GenEval's rule."""
    dx, dy = relation_components(box_a, box_b, threshold)
    found = set()
    if dx < -0.5:
        found.add("left_of")
    if dx > 0.5:
        found.add("right_of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def group_relations(
    boxes_a: Sequence[Sequence[float]],
    boxes_b: Sequence[Sequence[float]],
    *,
    locate: Literal["union", "every_pair"],
    threshold: float = POSITION_THRESHOLD,
) -> set[str]:
    """The relations "group a <R> group b" that hold by GenEval's rule; none when either group is empty.

    `locate="every_pair"` is GenEval's own: a relation holds when it holds between every instance of a and every
    instance of b. `locate="union"` (the shapes oracle) places each group at the union box of its instances. The two
    agree for single instances, which is all GenEval's position prompts have.
    """
    if not len(boxes_a) or not len(boxes_b):
        return set()
    if locate == "union":
        return relations(union_box(boxes_a), union_box(boxes_b), threshold)
    if locate != "every_pair":
        raise ValueError(f"locate must be 'union' or 'every_pair', got {locate!r}")
    found = set(RELATIONS)
    for box_a in boxes_a:
        for box_b in boxes_b:
            found &= relations(box_a, box_b, threshold)
    return found
