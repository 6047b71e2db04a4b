"""Rendering: determinism, tight boxes, layout rules, and that clean renders satisfy their specs."""

import numpy as np
import pytest

from trl_srum.shapes import (
    BACKGROUND,
    CATEGORIES,
    PALETTE,
    POSITION_THRESHOLD,
    evaluate,
    relations,
    render,
    render_scene,
    sample_specs,
    union_box,
)


def scenes(n_per_category, size=64, seed=0):
    for category in CATEGORIES:
        for i, spec in enumerate(sample_specs(category, n_per_category, seed=seed)):
            yield category, spec, *render_scene(spec, size=size, seed=i)


CROWDED = {
    "objects": [
        {"shape": "triangle", "color": "red", "count": 4},
        {"shape": "square", "color": "red", "count": 4},
    ],
    "relation": {"type": "below", "a": 0, "b": 1},
}


def test_render_is_deterministic_in_the_seed():
    spec = sample_specs("complex", 1, seed=0)[0]
    assert render(spec, seed=5).tobytes() == render(spec, seed=5).tobytes()
    assert render(spec, seed=5).tobytes() != render(spec, seed=6).tobytes()
    image = render(spec)
    assert image.mode == "RGB" and image.size == (64, 64)


def test_instances_match_the_spec():
    for _, spec, _, objects in scenes(20):
        for index, obj in enumerate(spec["objects"]):
            drawn = [o for o in objects if o["index"] == index]
            assert len(drawn) == obj["count"]
            assert all(o["shape"] == obj["shape"] and o["color"] == obj["color"] for o in drawn)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_boxes_tightly_contain_the_drawn_pixels(size):
    specs = [(spec, image, objects) for _, spec, image, objects in scenes(8, size=size)]
    specs.append((CROWDED, *render_scene(CROWDED, size=max(size, 48), seed=1)))
    for _, image, objects in specs:
        pixels = np.asarray(image)
        drawn = np.any(pixels != np.asarray(BACKGROUND, dtype=np.uint8), axis=-1)
        covered = np.zeros_like(drawn)
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
            inside = drawn[y1:y2, x1:x2]
            # Tight: every edge row and column of the box holds a drawn pixel.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert not covered[y1:y2, x1:x2].any(), "instance boxes overlap"
            covered[y1:y2, x1:x2] = True
            # The drawn pixels in the box are this instance's colour mixed with the background.
            colour, bg = np.asarray(PALETTE[o["color"]], float), np.asarray(BACKGROUND, float)
            mix = (pixels[y1:y2, x1:x2][inside] - bg) @ (colour - bg) / np.sum((colour - bg) ** 2)
            residual = pixels[y1:y2, x1:x2][inside] - (bg + mix[:, None] * (colour - bg))
            assert np.abs(residual).max() <= 1.0
        # Containing: no drawn pixel lies outside every box.
        assert not (drawn & ~covered).any()


def test_shapes_keep_their_size_and_margins():
    for _, spec, _, objects in scenes(30):
        sides = [max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) for o in objects]
        assert min(sides) >= 8, spec
        boxes = [o["box"] for o in objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
                assert gap >= 2, (spec, a, b)


def test_relations_hold_with_a_clear_margin():
    perpendicular = {"left_of": {"above", "below"}, "right_of": {"above", "below"}}
    perpendicular |= {"above": {"left_of", "right_of"}, "below": {"left_of", "right_of"}}
    for category in ("position", "complex"):
        for i, spec in enumerate(sample_specs(category, 100, seed=1)):
            _, objects = render_scene(spec, seed=i)
            box_a = union_box(o["box"] for o in objects if o["index"] == 0)
            box_b = union_box(o["box"] for o in objects if o["index"] == 1)
            kind = spec["relation"]["type"]
            assert kind in relations(box_a, box_b, threshold=2 * POSITION_THRESHOLD)
            assert not relations(box_a, box_b, threshold=0.0) & perpendicular[kind]


@pytest.mark.parametrize("size", [32, 64, 128])
def test_clean_renders_are_judged_correct(size):
    n = 100 if size == 64 else 15
    wrong = [
        (category, spec) for category, spec, image, _ in scenes(n, size=size) if not evaluate(image, spec)["correct"]
    ]
    assert not wrong


def test_crowded_scenes_fit_from_48_px():
    for seed in range(10):
        image, objects = render_scene(CROWDED, size=48, seed=seed)
        assert len(objects) == 8 and evaluate(image, CROWDED)["correct"]
    with pytest.raises(RuntimeError, match="four red triangles below four red squares"):
        render(CROWDED, size=32)


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="16"):
        render(sample_specs("single_object", 1, seed=0)[0], size=16)
    with pytest.raises(ValueError, match="hexagon"):
        render({"objects": [{"shape": "hexagon", "color": "red", "count": 1}], "relation": None})
