"""Specs, prompts, categories and the held-out split of the shapes world."""

import itertools

import pytest

from trl_srum.shapes import (
    CATEGORIES,
    COLORS,
    RELATIONS,
    SHAPES,
    accuracy_table,
    all_specs,
    category_of,
    combination_key,
    describe,
    is_heldout,
    parse_prompt,
    sample_specs,
    validate_spec,
    vocabulary,
)


def obj(color, shape, count=1):
    return {"shape": shape, "color": color, "count": count}


def every_spec():
    """Every category spec plus specs outside the categories (two objects with counts, three objects)."""
    yield from (spec for category in CATEGORIES for spec in all_specs(category))
    for count_a, count_b in itertools.product(range(1, 5), repeat=2):
        for rel in [None, *RELATIONS]:
            relation = None if rel is None else {"type": rel, "a": 0, "b": 1}
            yield {"objects": [obj("orange", "square", count_a), obj("blue", "circle", count_b)], "relation": relation}
    yield {
        "objects": [obj("red", "circle"), obj("green", "triangle", 2), obj("yellow", "square", 3)],
        "relation": None,
    }


def test_describe_examples():
    assert describe({"objects": [obj("red", "circle")], "relation": None}) == "a red circle"
    assert describe({"objects": [obj("orange", "square")], "relation": None}) == "an orange square"
    assert describe({"objects": [obj("blue", "triangle", 3)], "relation": None}) == "three blue triangles"
    spec = {"objects": [obj("purple", "square"), obj("orange", "circle")], "relation": None}
    assert describe(spec) == "a purple square and an orange circle"
    spec = {
        "objects": [obj("green", "triangle"), obj("red", "circle", 2)],
        "relation": {"type": "left_of", "a": 1, "b": 0},
    }
    assert describe(spec) == "two red circles to the left of a green triangle"


def test_parse_prompt_round_trips_every_spec():
    for spec in every_spec():
        canonical = validate_spec(spec)
        assert parse_prompt(describe(spec)) == canonical, describe(spec)


def test_validate_spec_canonicalises_relation_order():
    spec = {"objects": [obj("red", "circle"), obj("blue", "square")], "relation": {"type": "above", "a": 1, "b": 0}}
    canonical = validate_spec(spec)
    assert canonical["objects"] == [obj("blue", "square"), obj("red", "circle")]
    assert canonical["relation"] == {"type": "above", "a": 0, "b": 1}


def test_vocabulary_is_exactly_the_words_describe_produces():
    used = {word for spec in every_spec() for word in describe(spec).split()}
    assert set(vocabulary()) == used
    assert vocabulary() == sorted(vocabulary())
    assert all(word.islower() and word.isalpha() for word in vocabulary())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"objects": [obj("red", "hexagon")], "relation": None}, "hexagon"),
        ({"objects": [obj("pink", "circle")], "relation": None}, "pink"),
        ({"objects": [obj("red", "circle", 5)], "relation": None}, "5"),
        ({"objects": [obj("red", "circle", True)], "relation": None}, "True"),
        ({"objects": [{"shape": "circle", "colour": "red", "count": 1}], "relation": None}, "colour"),
        ({"objects": [obj("red", "circle"), obj("red", "circle", 2)], "relation": None}, "same colour and shape"),
        ({"objects": [obj("red", "circle")], "relation": {"type": "above", "a": 0, "b": 1}}, "exactly two"),
        (
            {"objects": [obj("red", "circle"), obj("red", "square")], "relation": {"type": "near", "a": 0, "b": 1}},
            "near",
        ),
        (
            {"objects": [obj("red", "circle"), obj("red", "square")], "relation": {"type": "above", "a": 0, "b": 0}},
            "a=0",
        ),
        ({"objects": [obj("red", "circle", 4), obj("red", "square", 4), obj("blue", "square")]}, "9 instances"),
        ({"objects": [], "relation": None}, "1 to 3"),
        ({"objects": [obj("red", "circle")], "relation": None, "style": "flat"}, "style"),
    ],
)
def test_validate_spec_names_the_bad_input(spec, message):
    with pytest.raises(ValueError, match=message):
        validate_spec(spec)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a red hexagon", "hexagon"),
        ("two red circle", "plural"),
        ("a red circles", "singular"),
        ("a orange circle", "article"),
        ("a red circle near a blue square", "near"),
        ("a red circle and", "ends before"),
        ("five red circles", "five"),
        ("a pink circle", "pink"),
    ],
)
def test_parse_prompt_names_the_bad_word(prompt, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(prompt)


def test_categories_are_distinct_and_recovered():
    seen = set()
    for category in CATEGORIES:
        specs = all_specs(category)
        assert specs, category
        for spec in specs:
            assert category_of(spec) == category
            key = describe(spec)
            assert key not in seen, f"{key!r} is in two categories"
            seen.add(key)
    assert category_of({"objects": [obj("red", "circle", 2), obj("blue", "square")], "relation": None}) is None


def test_category_definitions():
    for spec in all_specs("two_objects") + all_specs("position"):
        first, second = spec["objects"]
        assert first["color"] == second["color"] and first["shape"] != second["shape"]
    for spec in all_specs("colour_binding") + all_specs("complex"):
        first, second = spec["objects"]
        assert first["color"] != second["color"]
    assert all(spec["relation"] is not None for spec in all_specs("position") + all_specs("complex"))
    assert {spec["objects"][0]["count"] for spec in all_specs("counting")} == {2, 3, 4}
    # Binding prompts include same-shape pairs, where the colours alone tell the objects apart.
    assert any(s["objects"][0]["shape"] == s["objects"][1]["shape"] for s in all_specs("colour_binding"))


@pytest.mark.parametrize("category", CATEGORIES)
def test_splits_are_disjoint_non_empty_and_about_a_fifth(category):
    train, heldout = all_specs(category, "train"), all_specs(category, "heldout")
    assert train and heldout
    train_keys = {combination_key(spec) for spec in train}
    heldout_keys = {combination_key(spec) for spec in heldout}
    assert not train_keys & heldout_keys
    assert 0.2 <= len(heldout_keys) / len(train_keys | heldout_keys) <= 0.25
    assert all(is_heldout(spec) for spec in heldout) and not any(is_heldout(spec) for spec in train)


def test_heldout_pairs_never_meet_in_any_training_prompt():
    train_pairs = {
        frozenset((o["color"], o["shape"]) for o in spec["objects"])
        for category in CATEGORIES
        for spec in all_specs(category, "train")
        if len(spec["objects"]) == 2
    }
    for category in ("two_objects", "colour_binding", "position", "complex"):
        for spec in all_specs(category, "heldout"):
            assert frozenset((o["color"], o["shape"]) for o in spec["objects"]) not in train_pairs
    # "A left of B" and "B right of A" are one scene: they always share a split.
    for spec in all_specs("complex"):
        flipped = {"objects": spec["objects"][::-1], "relation": {"type": spec["relation"]["type"], "a": 1, "b": 0}}
        assert is_heldout(flipped) == is_heldout(spec)


def test_every_atom_occurs_in_training():
    atoms = {(o["color"], o["shape"]) for c in CATEGORIES for s in all_specs(c, "train") for o in s["objects"]}
    assert atoms == {(color, shape) for color in COLORS for shape in SHAPES}


def test_heldout_split_is_pinned():
    # The split is part of the experiment's definition: a change here invalidates every held-out number reported.
    prompts = sorted(describe(spec) for spec in all_specs("single_object", "heldout"))
    assert prompts == sorted(describe(spec) for spec in all_specs("single_object") if is_heldout(spec))
    assert prompts == PINNED_HELDOUT_SINGLE_OBJECTS


PINNED_HELDOUT_SINGLE_OBJECTS = ["a green circle", "a green square", "a purple square", "a purple triangle"]


def test_sample_specs_is_deterministic_and_respects_the_split():
    for category in CATEGORIES:
        for split in ("train", "heldout"):
            first = sample_specs(category, 50, seed=3, split=split)
            assert first == sample_specs(category, 50, seed=3, split=split)
            assert len(first) == 50
            assert all(category_of(s) == category and is_heldout(s) == (split == "heldout") for s in first)
    assert sample_specs("complex", 50, seed=3) != sample_specs("complex", 50, seed=4)


def test_sample_specs_covers_the_pool_before_repeating():
    pool = all_specs("single_object", "train")
    drawn = sample_specs("single_object", 2 * len(pool), seed=0)
    first_pass = [describe(s) for s in drawn[: len(pool)]]
    assert sorted(first_pass) == sorted(describe(s) for s in pool)


def test_sample_specs_rejects_bad_arguments():
    with pytest.raises(ValueError, match="colour-binding"):
        sample_specs("colour-binding", 3, seed=0)
    with pytest.raises(ValueError, match="test"):
        sample_specs("complex", 3, seed=0, split="test")


def test_accuracy_table():
    table = accuracy_table([("counting", True), ("counting", False), ("single_object", True), ("custom", True)])
    assert list(table) == ["single_object", "counting", "custom", "overall"]
    assert table["counting"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert table["overall"] == {"n": 4, "correct": 3, "accuracy": 0.75}
