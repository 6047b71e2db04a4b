"""Perturbations that make clean renders look like generated images, and alterations that make specs wrong.

`perturb` is what the oracle must see through (and what a judge can be trained with): junk specks, blur, a global
colour shift, Gaussian noise and JPEG compression. `alter` turns a spec into a nearby spec that an image of the
original can never satisfy, for testing the oracle's strictness and as hard negatives.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .spec import COLORS, MAX_COUNT, MAX_INSTANCES, MAX_OBJECTS, RELATIONS, SHAPES, validate_spec


ALTERATIONS: tuple[str, ...] = ("color", "shape", "count", "swap_colors", "relation", "missing", "extra")


def perturb(image: Image.Image, seed: int, strength: float = 1.0) -> Image.Image:
    """A randomly degraded copy of an image; deterministic in seed.

    At strength 1, for a 64 px image (lengths scale with the image, and every level linearly with strength): up to 4
    specks of 1-3 px in random colours, anywhere (on objects too), Gaussian blur of sigma up to 1 px, a global
    per-channel colour shift of up to +-12 (0-255 units), Gaussian noise of sigma up to 12, and JPEG compression at
    quality 40-90 with probability 1/2 (at most; the quality does not scale).
    """
    rng = np.random.default_rng(seed)
    scale = image.width / 64
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64).copy()
    for _ in range(rng.integers(0, round(4 * strength) + 1)):
        side = int(rng.integers(1, max(1, round(3 * strength * scale)) + 1))
        x, y = rng.integers(0, image.width - side + 1), rng.integers(0, image.height - side + 1)
        pixels[y : y + side, x : x + side] = rng.uniform(0, 255, 3)
    blurred = Image.fromarray(np.rint(pixels).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(rng.uniform(0, strength) * scale)
    )
    pixels = np.asarray(blurred, dtype=np.float64)
    pixels = pixels + rng.uniform(-12, 12, 3) * strength
    pixels = pixels + rng.normal(0, rng.uniform(0, 12) * strength, pixels.shape)
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if rng.random() < 0.5 * min(strength, 1.0):
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=int(rng.integers(40, 91)))
        out = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return out


def alter(spec: Mapping[str, Any], kind: str, seed: int) -> dict[str, Any] | None:
    """A spec that differs from `spec` by one kind of error, or None if that kind does not apply to it.

    Kinds: ``color`` / ``shape`` (one object's colour or shape changed to one no other object has), ``count`` (one
    count off by one), ``swap_colors`` (two objects of different shapes and colours swap colours), ``relation`` (the
    opposite or a perpendicular relation), ``missing`` (an object dropped, with any relation: the image then shows an
    extra object), ``extra`` (an object added that the image lacks; a relation is dropped, as it needs two objects).
    An image that satisfies `spec` can never satisfy the result, given the renderer's clear relation margins.
    """
    if kind not in ALTERATIONS:
        raise ValueError(f"unknown alteration {kind!r}; expected one of {ALTERATIONS}")
    spec = validate_spec(spec)
    rng = np.random.default_rng(seed)
    objects, relation = spec["objects"], spec["relation"]
    atoms = {(obj["color"], obj["shape"]) for obj in objects}
    candidates: list[dict[str, Any]] = []
    if kind in ("color", "shape"):
        values = COLORS if kind == "color" else SHAPES
        for i, obj in enumerate(objects):
            for value in values:
                changed = {**obj, kind: value}
                if (changed["color"], changed["shape"]) not in atoms:
                    candidates.append(_with_object(spec, i, changed))
    elif kind == "count":
        total = sum(obj["count"] for obj in objects)
        for i, obj in enumerate(objects):
            for count in (obj["count"] - 1, obj["count"] + 1):
                if 1 <= count <= MAX_COUNT and total - obj["count"] + count <= MAX_INSTANCES:
                    candidates.append(_with_object(spec, i, {**obj, "count": count}))
    elif kind == "swap_colors" and len(objects) == 2:
        first, second = objects
        if first["color"] != second["color"] and first["shape"] != second["shape"]:
            swapped = [{**first, "color": second["color"]}, {**second, "color": first["color"]}]
            candidates.append({"objects": swapped, "relation": relation})
    elif kind == "relation" and relation is not None:
        for other in RELATIONS:
            if other != relation["type"]:
                candidates.append({"objects": objects, "relation": {**relation, "type": other}})
    elif kind == "missing" and len(objects) > 1:
        candidates.extend({"objects": objects[:i] + objects[i + 1 :], "relation": None} for i in range(len(objects)))
    elif kind == "extra" and len(objects) < MAX_OBJECTS and sum(o["count"] for o in objects) < MAX_INSTANCES:
        for color in COLORS:
            for shape in SHAPES:
                if (color, shape) not in atoms:
                    added = {"shape": shape, "color": color, "count": 1}
                    candidates.append({"objects": [*objects, added], "relation": None})
    if not candidates:
        return None
    return validate_spec(candidates[int(rng.integers(len(candidates)))])


def _with_object(spec: dict[str, Any], index: int, obj: dict[str, Any]) -> dict[str, Any]:
    objects = list(spec["objects"])
    objects[index] = obj
    return {"objects": objects, "relation": spec["relation"]}
