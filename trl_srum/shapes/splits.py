"""Prompt categories of the shapes world, the fixed held-out split, and deterministic sampling.

Categories (as in GenEval / T2I-CompBench). Every object has a colour; objects in two-object categories have count 1.

- ``single_object``: one object, count 1 ("a red circle").
- ``counting``: one object, count 2 to 4 ("three blue squares").
- ``two_objects``: two different shapes in one shared colour ("a red circle and a red square"). The skill is drawing
  both objects; colour binding is trivial here.
- ``colour_binding``: two objects of different colours, shapes equal or different ("a red circle and a blue square",
  "a red circle and a blue circle"). Each colour must go on its own object: swapping the colours, or painting both
  objects one colour, is wrong.
- ``position``: ``two_objects`` plus a relation ("a red circle above a red square").
- ``complex``: ``colour_binding`` plus a relation ("a red circle to the left of a blue circle").

The categories are disjoint (one object or two; count 1 or more; one shared colour or two; relation or not), so
`category_of` recovers the category of every spec they produce. Both orders of the two objects are sampled.

Held-out split. Each spec has a combination key in one of four key spaces:

- single object, count 1: the (colour, shape) atom (18 keys);
- single object, count 2-4: the (colour, shape, count) triple (54 keys);
- two or more objects: the unordered pair of atoms, ignoring order, counts and relation (18 same-colour pairs for
  ``two_objects`` / ``position``, 135 different-colour pairs for ``colour_binding`` / ``complex``). The two objects of
  a held-out prompt therefore never appear together in any training prompt, in either order, phrasing ("A left of B"
  is "B right of A") or arrangement. A spec with three objects is held out if any of its pairs is.

In each key space the `HELDOUT_FRACTION` of keys with the smallest SHA-256 digests is held out: exactly
round(fraction x size) keys, never none, identical on every machine.

Atoms are never held out globally: every colour-shape atom occurs in training prompts. A model trained from scratch on
a word-level prompt has no way to know what an unseen "purple triangle" looks like, and the aim of the split is
compositional generalisation (new companions, arrangements and counts), not zero-shot attributes. So a held-out
single-object prompt is new as a prompt (that atom is never drawn alone in training) while the atom itself is seen in
counting and two-object prompts.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import random
from collections.abc import Mapping
from typing import Any

from .spec import COLORS, MAX_COUNT, RELATIONS, SHAPES, validate_spec


CATEGORIES: tuple[str, ...] = ("single_object", "two_objects", "counting", "colour_binding", "position", "complex")
SPLITS: tuple[str, ...] = ("train", "heldout")
HELDOUT_FRACTION = 0.2

_ATOMS = [(color, shape) for color in COLORS for shape in SHAPES]


def category_of(spec: Mapping[str, Any]) -> str | None:
    """The category a spec belongs to, or None for specs outside every category (e.g. two objects with counts)."""
    spec = validate_spec(spec)
    objects, relation = spec["objects"], spec["relation"]
    if len(objects) == 1:
        return "single_object" if objects[0]["count"] == 1 else "counting"
    if len(objects) != 2 or any(obj["count"] != 1 for obj in objects):
        return None
    if objects[0]["color"] == objects[1]["color"]:
        return "two_objects" if relation is None else "position"
    return "colour_binding" if relation is None else "complex"


def combination_key(spec: Mapping[str, Any]) -> str:
    """The combination a spec's split is decided by, e.g. "3 red circle" or "blue square+red circle"."""
    objects = validate_spec(spec)["objects"]
    if len(objects) == 1:
        return _single_key(objects[0]["color"], objects[0]["shape"], objects[0]["count"])
    return " & ".join(
        sorted(_pair_key((o["color"], o["shape"]), (p["color"], p["shape"])) for o, p in _pairs(objects))
    )


def is_heldout(spec: Mapping[str, Any]) -> bool:
    """Whether a spec belongs to the held-out split (see the module docstring for the rule)."""
    objects = validate_spec(spec)["objects"]
    if len(objects) == 1:
        obj = objects[0]
        space = "single" if obj["count"] == 1 else "counting"
        return _single_key(obj["color"], obj["shape"], obj["count"]) in _heldout_keys(space)
    for o, p in _pairs(objects):
        space = "same_colour_pair" if o["color"] == p["color"] else "two_colour_pair"
        if _pair_key((o["color"], o["shape"]), (p["color"], p["shape"])) in _heldout_keys(space):
            return True
    return False


def all_specs(category: str, split: str | None = None) -> list[dict[str, Any]]:
    """Every spec of a category in a fixed order, optionally only those of one split."""
    _check_category(category)
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    specs = _category_specs(category)
    if split is not None:
        specs = tuple(spec for spec in specs if is_heldout(spec) == (split == "heldout"))
    return copy.deepcopy(list(specs))


def sample_specs(category: str, n: int, seed: int, split: str = "train") -> list[dict[str, Any]]:
    """n specs of a category from one split, deterministic in (category, n, seed, split).

    Draws whole shuffled passes over the split's specs, so every spec appears once before any appears twice.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    pool = all_specs(category, split)
    # A string seed goes through SHA-512 in `random.seed`, so the stream does not depend on PYTHONHASHSEED.
    rng = random.Random(f"{category}/{split}/{seed}")
    out: list[dict[str, Any]] = []
    while len(out) < n:
        order = list(range(len(pool)))
        rng.shuffle(order)
        out.extend(copy.deepcopy(pool[i]) for i in order[: n - len(out)])
    return out


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")


def _single_key(color: str, shape: str, count: int) -> str:
    return f"{count} {color} {shape}"


def _pair_key(first: tuple[str, str], second: tuple[str, str]) -> str:
    return "+".join(sorted(f"{color} {shape}" for color, shape in (first, second)))


def _pairs(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return list(itertools.combinations(objects, 2))


@functools.cache
def _heldout_keys(space: str) -> frozenset[str]:
    if space == "single":
        keys = [_single_key(color, shape, 1) for color, shape in _ATOMS]
    elif space == "counting":
        keys = [_single_key(color, shape, n) for color, shape in _ATOMS for n in range(2, MAX_COUNT + 1)]
    else:
        same = space == "same_colour_pair"
        keys = [_pair_key(x, y) for x, y in itertools.combinations(_ATOMS, 2) if (x[0] == y[0]) == same]
    ranked = sorted(keys, key=lambda key: hashlib.sha256(f"{space}:{key}".encode()).hexdigest())
    return frozenset(ranked[: max(1, round(HELDOUT_FRACTION * len(keys)))])


@functools.cache
def _category_specs(category: str) -> tuple[dict[str, Any], ...]:
    def obj(color: str, shape: str, count: int = 1) -> dict[str, Any]:
        return {"shape": shape, "color": color, "count": count}

    if category == "single_object":
        return tuple({"objects": [obj(c, s)], "relation": None} for c, s in _ATOMS)
    if category == "counting":
        return tuple({"objects": [obj(c, s, n)], "relation": None} for c, s in _ATOMS for n in range(2, MAX_COUNT + 1))
    same_colour = category in ("two_objects", "position")
    # Ordered pairs: "A and B" and "B and A" are distinct prompts of one combination.
    # Atoms are distinct, so a same-colour pair always has two different shapes.
    pairs = [(x, y) for x, y in itertools.permutations(_ATOMS, 2) if (x[0] == y[0]) == same_colour]
    relations = [None] if category in ("two_objects", "colour_binding") else list(RELATIONS)
    return tuple(
        {"objects": [obj(*x), obj(*y)], "relation": None if rel is None else {"type": rel, "a": 0, "b": 1}}
        for x, y in pairs
        for rel in relations
    )
