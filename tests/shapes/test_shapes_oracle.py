"""The oracle reads perturbed renders right and is never fooled by a wrong spec."""

import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from trl_srum.shapes import (
    ALTERATIONS,
    BACKGROUND,
    CATEGORIES,
    PALETTE,
    alter,
    detect,
    evaluate,
    judge,
    perturb,
    relations,
    render,
    sample_specs,
)


SCENES_PER_CATEGORY = 250


@pytest.fixture(scope="module")
def robustness():
    """Per category: true specs accepted and altered specs accepted, on perturbed renders (strength 1)."""
    stats = {}
    for c, category in enumerate(CATEGORIES):
        accepted, altered, altered_accepted, kinds = 0, 0, 0, Counter()
        for i, spec in enumerate(sample_specs(category, SCENES_PER_CATEGORY, seed=11)):
            image = perturb(render(spec, seed=i), seed=10_000 * c + i)
            reading = detect(image)
            accepted += judge(reading, spec)["correct"]
            for kind in ALTERATIONS:
                wrong = alter(spec, kind, seed=i)
                if wrong is not None:
                    kinds[kind] += 1
                    altered += 1
                    altered_accepted += judge(reading, wrong)["correct"]
        stats[category] = (accepted / SCENES_PER_CATEGORY, 1 - altered_accepted / altered, kinds)
    return stats


@pytest.mark.parametrize("category", CATEGORIES)
def test_true_specs_are_accepted_on_perturbed_renders(robustness, category):
    accepted, _, _ = robustness[category]
    assert accepted >= 0.99, f"{category}: only {accepted:.3f} of true specs accepted"


@pytest.mark.parametrize("category", CATEGORIES)
def test_altered_specs_are_rejected_on_perturbed_renders(robustness, category):
    _, rejected, kinds = robustness[category]
    assert rejected >= 0.99, f"{category}: only {rejected:.3f} of altered specs rejected"
    # Every kind of error that applies to the category was tried many times.
    expected = {"color", "shape", "count", "missing" if category not in ("single_object", "counting") else "extra"}
    assert all(kinds[kind] >= SCENES_PER_CATEGORY // 2 for kind in expected), kinds


def test_alterations_apply_where_they_should():
    single = sample_specs("single_object", 1, seed=0)[0]
    assert alter(single, "missing", 0) is None and alter(single, "relation", 0) is None
    binding = {
        "objects": [{"shape": "circle", "color": "red", "count": 1}, {"shape": "square", "color": "blue", "count": 1}],
        "relation": {"type": "left_of", "a": 0, "b": 1},
    }
    swapped = alter(binding, "swap_colors", 0)
    assert [o["color"] for o in swapped["objects"]] == ["blue", "red"]
    assert alter(binding, "relation", 0)["relation"]["type"] != "left_of"
    with pytest.raises(ValueError, match="blur"):
        alter(binding, "blur", 0)


def test_perturbation_strength_zero_is_nearly_clean():
    spec = sample_specs("complex", 1, seed=0)[0]
    clean = render(spec)
    assert np.array_equal(np.asarray(perturb(clean, seed=1, strength=0.0)), np.asarray(clean))


def test_result_details():
    spec = {
        "objects": [{"shape": "circle", "color": "red", "count": 2}, {"shape": "square", "color": "blue", "count": 1}],
        "relation": {"type": "left_of", "a": 0, "b": 1},
    }
    image = render(spec, seed=3)
    result = evaluate(image, spec)
    assert result["correct"] and result["background_ok"] and not result["extra"]
    assert [(o["expected"], o["found"]) for o in result["objects"]] == [(2, 2), (1, 1)]
    assert result["relation"] == {"type": "left_of", "holds": True, "found": ["left_of"]}
    wrong_colour = {**spec, "objects": [{**spec["objects"][0], "color": "green"}, spec["objects"][1]]}
    result = evaluate(image, wrong_colour)
    first = result["objects"][0]
    assert not result["correct"] and first["found"] == 0 and first["shape_seen"] and not first["color_seen"]
    assert [(e["color"], e["shape"]) for e in result["extra"]] == [("red", "circle")] * 2
    assert result["relation"]["holds"] is False


def test_relation_of_multi_instance_objects_uses_their_union_box():
    spec = {
        "objects": [{"shape": "square", "color": "red", "count": 3}, {"shape": "circle", "color": "blue", "count": 2}],
        "relation": {"type": "above", "a": 0, "b": 1},
    }
    for seed in range(20):
        image = render(spec, seed=seed)
        assert evaluate(image, spec)["correct"]
        flipped = {**spec, "relation": {"type": "below", "a": 0, "b": 1}}
        assert not evaluate(image, flipped)["correct"]


def test_geneval_relation_rule():
    # 10x10 boxes; y grows downwards, so "above" is a smaller y.
    assert relations((0, 0, 10, 10), (30, 0, 40, 10)) == {"left_of"}
    assert relations((30, 0, 40, 10), (0, 0, 10, 10)) == {"right_of"}
    assert relations((0, 0, 10, 10), (0, 30, 10, 40)) == {"above"}
    assert relations((0, 30, 10, 40), (0, 0, 10, 10)) == {"below"}
    assert relations((0, 0, 10, 10), (30, 30, 40, 40)) == {"left_of", "above"}
    # An offset within the margin of 0.1 x (sum of sizes) = 2 px is no relation.
    assert relations((0, 0, 10, 10), (2, 0, 12, 10)) == set()
    # A mostly vertical offset is not "left of".
    assert relations((0, 0, 10, 10), (4, 30, 14, 40)) == {"above"}


def canvas(size=64):
    image = Image.new("RGB", (size, size), BACKGROUND)
    return image, ImageDraw.Draw(image)


def test_junk_and_wrong_backgrounds_make_an_image_wrong():
    spec = {"objects": [{"shape": "square", "color": "blue", "count": 1}], "relation": None}
    image, draw = canvas()
    draw.rectangle((10, 10, 25, 25), fill=PALETTE["blue"])
    assert evaluate(image, spec)["correct"]
    # A grey blob is an object of no palette colour: extra.
    draw.ellipse((40, 40, 55, 55), fill=(110, 110, 110))
    result = evaluate(image, spec)
    assert not result["correct"] and result["extra"][0]["color"] == "unknown"
    # Tiny specks and a thin line are noise.
    image, draw = canvas()
    draw.rectangle((10, 10, 25, 25), fill=PALETTE["blue"])
    draw.rectangle((40, 40, 42, 42), fill=PALETTE["red"])
    draw.line((5, 60, 60, 60), fill=PALETTE["green"], width=1)
    assert evaluate(image, spec)["correct"]
    # A scene on a coloured background is wrong whatever it shows.
    image, draw = canvas()
    image.paste(PALETTE["yellow"], (0, 0, 64, 64))
    draw.rectangle((10, 10, 25, 25), fill=PALETTE["blue"])
    result = evaluate(image, spec)
    assert not result["background_ok"] and not result["correct"]


@pytest.mark.parametrize(
    ("draw_shape", "expected"),
    [
        (lambda d: d.rounded_rectangle((20, 20, 37, 37), radius=3, fill=PALETTE["green"]), "square"),
        (lambda d: d.rounded_rectangle((20, 20, 37, 37), radius=8, fill=PALETTE["green"]), "circle"),
        (lambda d: d.ellipse((20, 20, 37, 39), fill=PALETTE["green"]), "circle"),
        (lambda d: d.ellipse((10, 20, 40, 35), fill=PALETTE["green"]), "unknown"),
        (lambda d: d.polygon([(20, 40), (38, 40), (29, 22)], fill=PALETTE["green"]), "triangle"),
        (lambda d: d.polygon([(20, 22), (38, 22), (29, 40)], fill=PALETTE["green"]), "unknown"),
    ],
)
def test_shape_reading_of_off_model_shapes(draw_shape, expected):
    image, draw = canvas()
    draw_shape(draw)
    (detection,) = detect(image).detections
    assert detection.shape == expected


def test_detect_rejects_float_arrays():
    with pytest.raises(ValueError, match="float64"):
        detect(np.zeros((64, 64, 3)))


def test_evaluate_is_fast():
    images = [(perturb(render(s, seed=i), seed=i), s) for i, s in enumerate(sample_specs("complex", 40, seed=2))]
    start = time.perf_counter()
    for image, spec in images:
        evaluate(image, spec)
    assert (time.perf_counter() - start) / len(images) < 0.02


def test_stronger_perturbations_degrade_acceptance_but_never_fool_the_oracle():
    # At 1.5x the design strength (noise sigma up to 18, blur up to 1.5 px, specks up to 5 px, which may count as
    # objects) true specs may be missed now and then, but a wrong spec must still be rejected.
    accepted = altered = altered_accepted = total = 0
    for c, category in enumerate(CATEGORIES):
        for i, spec in enumerate(sample_specs(category, 60, seed=12)):
            reading = detect(perturb(render(spec, seed=i), seed=7_000 * c + i, strength=1.5))
            total += 1
            accepted += judge(reading, spec)["correct"]
            for kind in ALTERATIONS:
                wrong = alter(spec, kind, seed=i)
                if wrong is not None:
                    altered += 1
                    altered_accepted += judge(reading, wrong)["correct"]
    assert accepted / total >= 0.95
    assert altered_accepted / altered <= 0.005
