import numpy as np
import torch
from datasets import Dataset

from trl_srum.rollout import ROLLOUT_FEATURES
from trl_srum.shapes import describe, evaluate, experiments, render, sample_specs
from trl_srum.shapes.pretrained import SHAPES_IMAGE_SIZE, load_shapes_model

from ..helpers import tiny_rollout_rows


def _shapes_rollouts(model) -> tuple[Dataset, list[dict]]:
    specs = sample_specs("colour_binding", 2, seed=0) + sample_specs("position", 1, seed=0)
    rows = tiny_rollout_rows(model, len(specs), image_size=(SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE))
    for row, spec in zip(rows, specs, strict=True):
        row["prompt"] = describe(spec)
    return Dataset.from_list(rows, features=ROLLOUT_FEATURES), specs


def test_clean_renders_control_swaps_images_and_latents_for_renders_of_the_prompt():
    model = load_shapes_model()
    rollouts, specs = _shapes_rollouts(model)
    renders = experiments.replaced_by_renders(rollouts, model)
    for row, spec, original in zip(renders, specs, rollouts, strict=True):
        expected = render(spec, size=SHAPES_IMAGE_SIZE, seed=original["seed"])
        assert np.array_equal(np.asarray(row["image"]), np.asarray(expected))
        assert evaluate(row["image"], spec)["correct"]
        torch.testing.assert_close(torch.tensor(row["latents"]), model.encode_images([expected])[0])
        assert row["regions"] == original["regions"] and row["prompt"] == original["prompt"]
    # The oracle accepts every render, so its rescoring of them is all +1.
    assert experiments.rescored_by_oracle(renders)["global_score"] == [1.0] * len(specs)


def test_oracle_filter_keeps_exactly_the_rows_the_oracle_calls_right():
    model = load_shapes_model()
    rollouts, specs = _shapes_rollouts(model)
    # One row replaced by a clean render of its prompt: right for sure; the model's random samples are checked as is.
    renders = experiments.replaced_by_renders(rollouts.select([1]), model)
    mixed = Dataset.from_list([rollouts[0], renders[0], rollouts[2]], features=ROLLOUT_FEATURES)
    kept = experiments.oracle_correct(mixed)
    expected = [
        row["row_id"] for row, spec in zip(mixed, specs, strict=True) if evaluate(row["image"], spec)["correct"]
    ]
    assert kept["row_id"] == expected and renders[0]["row_id"] in expected
