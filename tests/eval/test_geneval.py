"""The `geneval` protocol: GenEval's rules on synthetic detections (each rule, passing and failing), its metadata, and
the protocol end to end on tiny random OWLv2, Grounding DINO and CLIP models."""

import json

import pytest

from trl_srum.eval import EvalConfig, evaluate_folder
from trl_srum.eval.detectors import COLORS, DetectedObject, match_name
from trl_srum.eval.geneval import check_metadata, class_names, geneval_verdict, load_geneval_prompts
from trl_srum.models.tiny_judges import save_tiny, tiny_clip, tiny_grounding_dino, tiny_owlv2
from trl_srum.object_rules import group_relations, relations

from .utils import random_images


def obj(x1, y1, x2, y2, score=0.9, color=None):
    return DetectedObject((x1, y1, x2, y2), score, color)


def verdict(metadata, objects):
    return geneval_verdict(check_metadata(metadata, "test"), objects)


SINGLE = {"tag": "single_object", "prompt": "a photo of a cat", "include": [{"class": "cat", "count": 1}]}
TWO = {
    "tag": "two_object",
    "prompt": "a photo of a cat and a dog",
    "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
}
COUNTING = {
    "tag": "counting",
    "prompt": "a photo of two dogs",
    "include": [{"class": "dog", "count": 2}],
    "exclude": [{"class": "dog", "count": 3}],
}
COLOR = {"tag": "colors", "prompt": "a photo of a red car", "include": [{"class": "car", "count": 1, "color": "red"}]}
POSITION = {
    "tag": "position",
    "prompt": "a photo of a dog left of a cat",
    "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
}
COLOR_ATTR = {
    "tag": "color_attr",
    "prompt": "a photo of a red car and a blue bus",
    "include": [{"class": "car", "count": 1, "color": "red"}, {"class": "bus", "count": 1, "color": "blue"}],
}


def test_object_presence():
    assert verdict(SINGLE, {"cat": [obj(0, 0, 10, 10)]}) == (True, [])
    # more instances than asked are fine outside counting prompts
    assert verdict(SINGLE, {"cat": [obj(0, 0, 10, 10), obj(20, 0, 30, 10)]})[0]
    assert verdict(SINGLE, {"dog": [obj(0, 0, 10, 10)]}) == (False, ["expected at least 1 cat, found 0"])


def test_two_objects():
    assert verdict(TWO, {"cat": [obj(0, 0, 10, 10)], "dog": [obj(20, 0, 30, 10)]})[0]
    assert verdict(TWO, {"cat": [obj(0, 0, 10, 10)]}) == (False, ["expected at least 1 dog, found 0"])


def test_counting_is_exact():
    two = [obj(0, 0, 10, 10), obj(20, 0, 30, 10)]
    assert verdict(COUNTING, {"dog": two})[0]
    assert verdict(COUNTING, {"dog": two[:1]}) == (False, ["expected at least 2 dog, found 1"])
    assert verdict(COUNTING, {"dog": [*two, obj(40, 0, 50, 10)]}) == (False, ["expected fewer than 3 dog, found 3"])


def test_colour():
    assert verdict(COLOR, {"car": [obj(0, 0, 10, 10, color="red")]})[0]
    correct, reasons = verdict(COLOR, {"car": [obj(0, 0, 10, 10, color="blue")]})
    assert not correct and reasons == ["expected 1 red car, found 0 (blue)"]
    # only the most confident `count` instances are looked at (GenEval's rule)
    assert verdict(COLOR, {"car": [obj(0, 0, 10, 10, 0.9, "red"), obj(20, 0, 30, 10, 0.5, "blue")]})[0]
    assert not verdict(COLOR, {"car": [obj(0, 0, 10, 10, 0.9, "blue"), obj(20, 0, 30, 10, 0.5, "red")]})[0]


def test_position_with_genevals_margin():
    cat = obj(60, 40, 80, 60)
    assert verdict(POSITION, {"cat": [cat], "dog": [obj(0, 40, 20, 60)]}) == (True, [])
    correct, reasons = verdict(POSITION, {"cat": [cat], "dog": [obj(100, 40, 120, 60)]})
    assert not correct and reasons == ["expected dog left of cat, found right_of"]
    # a dog only a little to the left: the offset is within the margin (0.1 of the two widths), so no relation holds
    correct, reasons = verdict(POSITION, {"cat": [cat], "dog": [obj(57, 40, 77, 60)]})
    assert not correct and reasons == ["expected dog left of cat, found no relation"]
    # without a cat the dog has nothing to be left of
    assert verdict(POSITION, {"dog": [obj(0, 40, 20, 60)]})[1] == [
        "expected at least 1 cat, found 0",
        "no cat for dog to be left of",
    ]


def test_colour_attribution():
    right = {"car": [obj(0, 0, 10, 10, color="red")], "bus": [obj(20, 0, 30, 10, color="blue")]}
    assert verdict(COLOR_ATTR, right)[0]
    swapped = {"car": [obj(0, 0, 10, 10, color="blue")], "bus": [obj(20, 0, 30, 10, color="red")]}
    assert verdict(COLOR_ATTR, swapped)[1] == [
        "expected 1 red car, found 0 (blue)",
        "expected 1 blue bus, found 0 (red)",
    ]


def test_the_position_rule_is_the_one_the_shapes_oracle_uses():
    a, b = (0, 40, 20, 60), (60, 40, 80, 60)
    assert group_relations([a], [b], locate="every_pair") == relations(a, b) == {"left_of"}
    # GenEval needs the relation between every pair; the shapes oracle places each group at its union box
    far_left, overlapping = (0, 40, 10, 60), (65, 40, 75, 60)
    assert group_relations([far_left, overlapping], [b], locate="every_pair") == set()
    assert group_relations([far_left, overlapping], [b], locate="union") == {"left_of"}
    assert group_relations([], [b], locate="union") == set()
    with pytest.raises(ValueError, match="locate"):
        group_relations([a], [b], locate="centre")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"include": []}, "non-empty list"),
        ({"include": [{"class": "cat", "count": 0}]}, "integer 'count' >= 1"),
        ({"include": [{"class": "cat", "count": 1, "color": "teal"}]}, "colour 'teal'"),
        ({"include": [{"class": "cat", "count": 1, "position": ["left of", 0]}]}, r"position must be \[relation"),
        ({"include": [{"class": "a", "count": 1}, {"class": "b", "count": 1, "position": ["near", 0]}]}, "position"),
        ({"tag": None}, "string fields 'prompt' and 'tag'"),
    ],
)
def test_malformed_metadata_is_refused_naming_the_entry(change, message):
    with pytest.raises(ValueError, match=f"where: .*{message}|where: {message}"):
        check_metadata({**SINGLE, **change}, "where")


def test_prompts_and_class_names(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in (SINGLE, COUNTING, POSITION)))
    records, metadata = load_geneval_prompts(str(path), "train")
    assert [(r.prompt_id, r.category) for r in records] == [
        ("00000", "single_object"),
        ("00001", "counting"),
        ("00002", "position"),
    ]
    assert class_names(metadata["00001"]) == ["dog"] and class_names(metadata["00002"]) == ["cat", "dog"]
    path.write_text(json.dumps(SINGLE) + "\n{not json\n")
    with pytest.raises(ValueError, match="evaluation_metadata.jsonl:2: not valid JSON"):
        load_geneval_prompts(str(path), "train")


def test_detector_labels_map_back_to_the_queried_names():
    names = ["dining table", "cat", "hot dog"]
    assert match_name("cat", names) == "cat"
    assert match_name("dining table", names) == "dining table"
    assert match_name("table", names) == "dining table"  # a part of one name (Grounding DINO's token spans)
    assert match_name("dog", names) == "hot dog"
    assert match_name("cat. hot dog.", names) is None  # runs over two names: no guess
    assert match_name("", names) is None


GENEVAL_ROWS = [SINGLE, TWO, COUNTING, COLOR, POSITION, COLOR_ATTR]


@pytest.fixture(scope="module")
def geneval_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval")
    (root / "evaluation_metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in GENEVAL_ROWS))
    # GenEval's own layout: <index>/samples/0000.png
    flat = random_images(root / "flat", [f"{i:05d}" for i in range(len(GENEVAL_ROWS))], per_prompt=2, seed=2)
    for prompt_dir in flat.iterdir():
        (prompt_dir / "samples").mkdir()
        for image in prompt_dir.glob("*.png"):
            image.rename(prompt_dir / "samples" / image.name)
    save_tiny(root / "clip", *tiny_clip(seed=0))
    save_tiny(root / "owlv2", *tiny_owlv2(seed=0))
    save_tiny(root / "grounding-dino", *tiny_grounding_dino(seed=0))
    return root


@pytest.mark.parametrize("detector", ["owlv2", "grounding-dino"])
def test_end_to_end_on_tiny_random_detectors(geneval_workspace, tmp_path, detector):
    root = geneval_workspace
    config = EvalConfig(
        protocol="geneval",
        prompts=str(root / "evaluation_metadata.jsonl"),
        images_dir=str(root / "flat"),
        eval_dir=str(tmp_path / "run"),
        detector_model=str(root / detector),
        clip_model=str(root / "clip"),
        detection_threshold=0.0,  # a random detector's scores are arbitrary: keep every box it proposes
        judge_batch_size=5,
    )
    results = evaluate_folder(config)
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary["num_images"] == 2 * len(GENEVAL_ROWS) and summary["missing_judgements"] == 0
    assert list(summary["categories"]) == [row["tag"] for row in GENEVAL_ROWS]
    assert summary["judge"]["detector_model"] == str(root / detector)
    assert summary["overall_rule"].startswith("unweighted mean of single_object, two_object, counting")
    for row in results.rows:
        verdict_ = json.loads(row["output"])
        assert row["score"] == float(verdict_["correct"]) and verdict_["correct"] == (not verdict_["reasons"])
        for found in verdict_["objects"].values():
            assert len(found) <= config.max_objects
            assert all(o["color"] is None or o["color"] in COLORS for o in found)
    # colour clauses were classified whenever their objects were found
    colour_rows = [json.loads(r["output"]) for r in results.rows if r["category"] in ("colors", "color_attr")]
    for verdict_ in colour_rows:
        for name in ("car", "bus"):
            if verdict_["objects"].get(name):
                assert verdict_["objects"][name][0]["color"] in COLORS
    assert (tmp_path / "run" / "grids" / "counting.png").is_file()
