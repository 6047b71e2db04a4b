"""Scene specs of the shapes world, and the prompts that describe them.

A spec is a JSON-compatible dict::

    {"objects": [{"shape": S, "color": C, "count": N}, ...], "relation": None | {"type": R, "a": i, "b": j}}

with S in `SHAPES`, C in `COLORS`, N in 1..`MAX_COUNT` and R in `RELATIONS`. A spec holds one to `MAX_OBJECTS`
objects, no two with the same (colour, shape) (that would be one object with a larger count) and at most
`MAX_INSTANCES` drawn instances in all, so that every scene stays legible at 64x64. A relation needs exactly two
objects and says "object a is <R> object b"; its canonical form is a = 0, b = 1 (the object named first in the prompt),
which `validate_spec` produces by reordering the objects.

Prompts use a fixed lower-case vocabulary (`vocabulary()`): "a red circle", "an orange square", "three blue
triangles", "a purple square and an orange circle", "two red circles to the left of a green triangle". `parse_prompt`
inverts `describe` exactly on canonical specs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
MAX_COUNT = 4
MAX_OBJECTS = 3
MAX_INSTANCES = 8

# sRGB values of the palette. They are far apart along every background-to-colour line (the oracle separates
# antialiased edges by projecting onto those lines), and yellow is saturated enough to stand out from the background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 90, 225),
    "yellow": (235, 210, 25),
    "purple": (145, 55, 190),
    "orange": (245, 135, 20),
}
BACKGROUND: tuple[int, int, int] = (235, 235, 235)

_NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four"}
_RELATION_WORDS = {
    "left_of": ("to", "the", "left", "of"),
    "right_of": ("to", "the", "right", "of"),
    "above": ("above",),
    "below": ("below",),
}
_SPEC_KEYS = {"objects", "relation"}
_OBJECT_KEYS = {"shape", "color", "count"}
_RELATION_KEYS = {"type", "a", "b"}


def validate_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a spec and return its canonical copy (relation a = 0, b = 1); raise ValueError naming what is wrong."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a spec must be a dict, got {type(spec).__name__}")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"unknown spec key(s) {sorted(unknown)}; expected {sorted(_SPEC_KEYS)}")
    objects = spec.get("objects")
    if not isinstance(objects, list | tuple) or not 1 <= len(objects) <= MAX_OBJECTS:
        raise ValueError(f"spec 'objects' must be a list of 1 to {MAX_OBJECTS} objects, got {objects!r}")
    canonical = [_validate_object(obj) for obj in objects]
    atoms = [(obj["color"], obj["shape"]) for obj in canonical]
    if len(set(atoms)) != len(atoms):
        raise ValueError(f"spec lists the same colour and shape twice in {atoms}; use one object with a count")
    total = sum(obj["count"] for obj in canonical)
    if total > MAX_INSTANCES:
        raise ValueError(f"spec asks for {total} instances, more than the {MAX_INSTANCES} a scene can hold")
    relation = spec.get("relation")
    if relation is None:
        return {"objects": canonical, "relation": None}
    if not isinstance(relation, Mapping) or set(relation) != _RELATION_KEYS:
        raise ValueError(
            f"spec 'relation' must be null or a dict with keys {sorted(_RELATION_KEYS)}, got {relation!r}"
        )
    if relation["type"] not in RELATIONS:
        raise ValueError(f"unknown relation type {relation['type']!r}; expected one of {RELATIONS}")
    if len(canonical) != 2:
        raise ValueError(f"a relation needs exactly two objects, the spec has {len(canonical)}")
    a, b = relation["a"], relation["b"]
    if {a, b} != {0, 1} or not all(type(i) is int for i in (a, b)):
        raise ValueError(f"relation indices must be 0 and 1 (in either order), got a={a!r}, b={b!r}")
    if a == 1:
        canonical.reverse()
    return {"objects": canonical, "relation": {"type": relation["type"], "a": 0, "b": 1}}


def _validate_object(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, Mapping) or set(obj) != _OBJECT_KEYS:
        raise ValueError(f"a spec object must be a dict with keys {sorted(_OBJECT_KEYS)}, got {obj!r}")
    if obj["shape"] not in SHAPES:
        raise ValueError(f"unknown shape {obj['shape']!r}; expected one of {SHAPES}")
    if obj["color"] not in COLORS:
        raise ValueError(f"unknown color {obj['color']!r}; expected one of {COLORS}")
    count = obj["count"]
    # bool is an int subclass; True must not pass as a count of one.
    if type(count) is not int or not 1 <= count <= MAX_COUNT:
        raise ValueError(f"object count must be an int in 1..{MAX_COUNT}, got {count!r}")
    return {"shape": obj["shape"], "color": obj["color"], "count": count}


def describe(spec: Mapping[str, Any]) -> str:
    """The prompt of a spec, e.g. "two red circles to the left of a green triangle"."""
    spec = validate_spec(spec)
    phrases = [_object_phrase(obj) for obj in spec["objects"]]
    if spec["relation"] is None:
        return " and ".join(phrases)
    return " ".join([phrases[0], relation_phrase(spec["relation"]["type"]), phrases[1]])


def relation_phrase(kind: str) -> str:
    """How a prompt says a relation, e.g. "to the left of" for `left_of`."""
    return " ".join(_RELATION_WORDS[kind])


def _object_phrase(obj: Mapping[str, Any]) -> str:
    count = obj["count"]
    if count == 1:
        article = "an" if obj["color"][0] in "aeiou" else "a"
        return f"{article} {obj['color']} {obj['shape']}"
    return f"{_NUMBERS[count]} {obj['color']} {obj['shape']}s"


def vocabulary() -> list[str]:
    """Every word `describe` can produce, sorted."""
    words = {"a", "an", "and", *_NUMBERS.values(), *COLORS, *SHAPES, *(f"{shape}s" for shape in SHAPES)}
    for phrase in _RELATION_WORDS.values():
        words.update(phrase)
    return sorted(words)


def parse_prompt(text: str) -> dict[str, Any]:
    """Invert `describe`: the canonical spec of a prompt; raise ValueError naming the first word that does not fit."""
    words = text.strip().lower().split()
    objects, pos = [], 0
    obj, pos = _parse_object(words, pos, text)
    objects.append(obj)
    relation = None
    for rel, phrase in _RELATION_WORDS.items():
        if tuple(words[pos : pos + len(phrase)]) == phrase:
            obj, pos = _parse_object(words, pos + len(phrase), text)
            objects.append(obj)
            relation = {"type": rel, "a": 0, "b": 1}
            break
    else:
        while pos < len(words) and words[pos] == "and":
            obj, pos = _parse_object(words, pos + 1, text)
            objects.append(obj)
    if pos != len(words):
        raise ValueError(f"unexpected word {words[pos]!r} at position {pos} in prompt {text!r}")
    return validate_spec({"objects": objects, "relation": relation})


def _parse_object(words: list[str], pos: int, text: str) -> tuple[dict[str, Any], int]:
    if pos + 3 > len(words):
        raise ValueError(f"prompt {text!r} ends before an object phrase (count, colour, shape) is complete")
    number, color, noun = words[pos : pos + 3]
    counts = {word: n for n, word in _NUMBERS.items()} | {"an": 1}
    if number not in counts:
        raise ValueError(f"expected a count word {sorted(counts)} at position {pos} in {text!r}, got {number!r}")
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r} at position {pos + 1} in {text!r}")
    count = counts[number]
    shape = noun[:-1] if count > 1 and noun.endswith("s") else noun
    if shape not in SHAPES or (count > 1) != (noun != shape):
        raise ValueError(
            f"expected a {'plural' if count > 1 else 'singular'} shape at position {pos + 2} in {text!r}, got {noun!r}"
        )
    obj = {"shape": shape, "color": color, "count": count}
    if _object_phrase(obj).split()[0] != number:
        raise ValueError(f"wrong article {number!r} before {color!r} in {text!r}")
    return obj, pos + 3
