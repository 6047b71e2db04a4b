"""Rendering specs to images with random valid layouts.

Every instance is an upright shape in a square box of side s: a filled axis-aligned square, a disc, or an isosceles
triangle with its base at the bottom and its apex at the top centre (fixed orientations: the oracle tells the shapes
apart by their silhouettes). Shapes are drawn at 4x resolution and box-filtered down, so edges are antialiased.

Layout rules, for an image of side ``size``:
- sides are drawn per instance from a range that shrinks with the number of instances (about 14-23 px for one or two
  instances at 64 px, 10-14 px for five to eight, never under 7 px), so that eight instances fit and a 10 px square
  is still a square; a scene that cannot fit (eight instances at 32 px) raises RuntimeError;
- instance boxes keep ``max(3, 0.05 * size)`` px apart (so same-coloured instances never merge) and 1 px from the
  border;
- a relation holds with a clear margin: it holds by GenEval's rule at twice GenEval's threshold, and the raw offset
  along the other axis is under 0.35 of the offset's length, so the perpendicular relations do not hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .geometry import POSITION_THRESHOLD, Box, relation_components, relations, union_box
from .spec import BACKGROUND, PALETTE, describe, validate_spec


MIN_SIZE = 32
# Below about 7 px a triangle has no solid interior left for the oracle (and little for a model) to read.
MIN_SIDE = 7.0
_SUPERSAMPLE = 4
_MAX_ATTEMPTS = 300
_POSITION_TRIES = 40
_RELATION_AXIS = {"left_of": 0, "right_of": 0, "above": 1, "below": 1}


@dataclass(frozen=True)
class _Instance:
    index: int
    shape: str
    color: str
    box: Box


def render(spec: Mapping[str, Any], size: int = 64, seed: int = 0) -> Image.Image:
    """A random valid image of a spec; see `render_scene`."""
    return render_scene(spec, size, seed)[0]


def render_scene(spec: Mapping[str, Any], size: int = 64, seed: int = 0) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Render a spec; deterministic in (spec, size, seed).

    Returns the RGB image and one entry per drawn instance, in spec order: ``{"shape", "color", "index"`` (the object's
    position in ``spec["objects"]``) ``, "box": [x1, y1, x2, y2]}``, the tight end-exclusive box of the pixels that
    differ from the background.
    """
    spec = validate_spec(spec)
    if not isinstance(size, int) or size < MIN_SIZE:
        raise ValueError(f"image size must be an int of at least {MIN_SIZE}, got {size!r}")
    rng = np.random.default_rng(seed)
    instances = _layout(spec, size, rng)
    canvas = np.empty((size, size, 3), dtype=np.float64)
    canvas[:] = BACKGROUND
    coverages = []
    for inst in instances:
        alpha = _coverage(inst.shape, inst.box, size)
        canvas += alpha[..., None] * (np.asarray(PALETTE[inst.color], dtype=np.float64) - canvas)
        coverages.append(alpha)
    pixels = np.rint(canvas).astype(np.uint8)
    drawn = np.any(pixels != np.asarray(BACKGROUND, dtype=np.uint8), axis=-1)
    objects = []
    for inst, alpha in zip(instances, coverages):
        ys, xs = np.nonzero(drawn & (alpha > 0))
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        objects.append({"shape": inst.shape, "color": inst.color, "index": inst.index, "box": box})
    return Image.fromarray(pixels, "RGB"), objects


def _coverage(shape: str, box: Box, size: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape, from a 4x supersampled drawing."""
    k = _SUPERSAMPLE
    mask = Image.new("L", (size * k, size * k), 0)
    draw = ImageDraw.Draw(mask)
    x1, y1, x2, y2 = (v * k for v in box)
    # PIL includes the end coordinate, so pull it in by one supersampled pixel to keep the box end-exclusive.
    if shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=255)
    elif shape == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=255)
    else:
        draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)], fill=255)
    small = mask.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _side_range(instances: int) -> tuple[float, float]:
    """Instance side as a fraction of the image side, by the number of instances in the scene."""
    if instances <= 2:
        return 0.22, 0.36
    if instances <= 4:
        return 0.18, 0.28
    return 0.16, 0.22


def _layout(spec: dict[str, Any], size: int, rng: np.random.Generator) -> list[_Instance]:
    owners = [i for i, obj in enumerate(spec["objects"]) for _ in range(obj["count"])]
    lo, hi = _side_range(len(owners))
    gap, margin = max(3.0, 0.05 * size), 1.0
    for attempt in range(_MAX_ATTEMPTS):
        # Crowded scenes that keep failing get slightly smaller shapes rather than no image.
        sides = np.maximum(rng.uniform(lo, hi, len(owners)) * size * 0.95 ** (attempt // 50), MIN_SIDE)
        regions = _regions(spec, size, gap, margin, rng)
        boxes: dict[int, Box] = {}
        for k in np.argsort(-sides, kind="stable"):
            box = _place(sides[k], regions[owners[k]], list(boxes.values()), gap, rng)
            if box is None:
                break
            boxes[int(k)] = box
        else:
            instances = [
                _Instance(owner, spec["objects"][owner]["shape"], spec["objects"][owner]["color"], boxes[k])
                for k, owner in enumerate(owners)
            ]
            if spec["relation"] is None or _clear_relation(spec["relation"]["type"], instances):
                return instances
    raise RuntimeError(f"could not lay out {describe(spec)!r} in a {size}x{size} image")


def _regions(spec: dict[str, Any], size: int, gap: float, margin: float, rng: np.random.Generator) -> list[Box]:
    """The area each object's instances are placed in: the whole image, or two sides of a split for a relation."""
    full = (margin, margin, size - margin, size - margin)
    relation = spec["relation"]
    if relation is None:
        return [full] * len(spec["objects"])
    axis = _RELATION_AXIS[relation["type"]]
    split = rng.uniform(0.42, 0.58) * size
    half_band = rng.uniform(0.3, 0.5) * size
    centre = rng.uniform(half_band, size - half_band)
    # Both objects share a band across the relation axis, which keeps the perpendicular offset small.
    cross = (max(margin, centre - half_band), min(size - margin, centre + half_band))
    first = (margin, split - gap / 2)
    second = (split + gap / 2, size - margin)
    a_first = relation["type"] in ("left_of", "above")
    along = [first, second] if a_first else [second, first]
    if axis == 0:
        return [(x1, cross[0], x2, cross[1]) for x1, x2 in along]
    return [(cross[0], y1, cross[1], y2) for y1, y2 in along]


def _place(side: float, region: Box, placed: list[Box], gap: float, rng: np.random.Generator) -> Box | None:
    x_lo, y_lo, x_hi, y_hi = region[0], region[1], region[2] - side, region[3] - side
    if x_hi < x_lo or y_hi < y_lo:
        return None
    for _ in range(_POSITION_TRIES):
        x, y = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
        box = (x, y, x + side, y + side)
        if all(_apart(box, other, gap) for other in placed):
            return box
    return None


def _apart(a: Box, b: Box, gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _clear_relation(relation: str, instances: list[_Instance]) -> bool:
    box_a = union_box(inst.box for inst in instances if inst.index == 0)
    box_b = union_box(inst.box for inst in instances if inst.index == 1)
    if relation not in relations(box_a, box_b, threshold=2 * POSITION_THRESHOLD):
        return False
    raw = relation_components(box_a, box_b, threshold=0.0)
    return abs(raw[1 - _RELATION_AXIS[relation]]) < 0.35
