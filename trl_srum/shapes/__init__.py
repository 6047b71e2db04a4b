"""The synthetic shapes world: coloured shapes, prompts about them, renders, and an exact oracle.

SRUM's effect is demonstrated on a tiny model trained from scratch in this world, where whether an image matches its
prompt is decided exactly. Modules:

- `spec`: scene specs, the palette, prompts (`describe`, `parse_prompt`, `vocabulary`);
- `splits`: the six prompt categories, the held-out split of combinations, deterministic sampling;
- `render`: random valid layouts drawn with antialiasing, with per-instance boxes;
- `oracle`: reads an image back into objects and judges it against a spec;
- `geometry`: boxes and GenEval's relative-position rule;
- `augment`: perturbations that mimic generated images, and spec alterations that make a prompt wrong.
"""

from .augment import ALTERATIONS, alter, perturb
from .geometry import POSITION_THRESHOLD, relations, union_box
from .oracle import Detection, Reading, accuracy_table, detect, evaluate, judge
from .render import render, render_scene
from .spec import (
    BACKGROUND,
    COLORS,
    MAX_COUNT,
    MAX_INSTANCES,
    MAX_OBJECTS,
    PALETTE,
    RELATIONS,
    SHAPES,
    describe,
    parse_prompt,
    validate_spec,
    vocabulary,
)
from .splits import (
    CATEGORIES,
    HELDOUT_FRACTION,
    SPLITS,
    all_specs,
    category_of,
    combination_key,
    is_heldout,
    sample_specs,
)


__all__ = [
    "ALTERATIONS",
    "BACKGROUND",
    "CATEGORIES",
    "COLORS",
    "HELDOUT_FRACTION",
    "MAX_COUNT",
    "MAX_INSTANCES",
    "MAX_OBJECTS",
    "PALETTE",
    "POSITION_THRESHOLD",
    "RELATIONS",
    "SHAPES",
    "SPLITS",
    "Detection",
    "Reading",
    "accuracy_table",
    "all_specs",
    "alter",
    "category_of",
    "combination_key",
    "describe",
    "detect",
    "evaluate",
    "is_heldout",
    "judge",
    "parse_prompt",
    "perturb",
    "relations",
    "render",
    "render_scene",
    "sample_specs",
    "union_box",
    "validate_spec",
    "vocabulary",
]
