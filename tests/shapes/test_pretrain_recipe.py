import random
import sys

import pytest
import torch

from ..helpers import REPO_ROOT


sys.path.insert(0, str(REPO_ROOT / "recipes" / "shapes"))
import pretrain  # noqa: E402


def _content_to_position_ratio(model) -> float:
    image = pretrain.render(pretrain.random_train_spec(random.Random(1)), size=pretrain.SHAPES_IMAGE_SIZE, seed=1)
    tokens = model.embed_images_for_understanding([model.understanding_pixels(image)])[0]
    grid = model.config.vit_max_num_patch_per_side
    positions = model.vit_pos_embed(torch.arange(grid * grid))
    return ((tokens - positions).pow(2).mean() / positions.pow(2).mean()).sqrt().item()


@torch.no_grad()
def test_matching_the_connector_scale_makes_image_content_as_loud_as_positions():
    model = pretrain.build_model(seed=0, llm_hidden=32, llm_layers=1, vit_hidden=16, vit_layers=1)
    # A fresh tiny connector whispers under the sin-cos table: the images are all but invisible to the LLM.
    assert _content_to_position_ratio(model) < 0.2
    factor = pretrain.match_connector_scale(model, random.Random(0))
    assert factor > 5
    assert 0.5 < _content_to_position_ratio(model) < 2.0


def test_training_one_side_leaves_the_other_untouched():
    model = pretrain.build_model(seed=0, llm_hidden=32, llm_layers=1, vit_hidden=16, vit_layers=1)
    generation_side = set(model.generation_parameter_names())
    pretrain.select_trainable(model, "generation")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == generation_side
    pretrain.select_trainable(model, "understanding")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not trainable & generation_side
    assert any(name.startswith("vit_model.") for name in trainable)
    assert any(name.startswith("connector.") for name in trainable)
    pretrain.select_trainable(model, "all")
    assert all(p.requires_grad != name.startswith("vae.") for name, p in model.named_parameters())


def test_a_short_generation_only_run_changes_generation_weights_and_nothing_else(monkeypatch):
    argv = ["pretrain.py", "--train", "generation", "--steps", "3", "--latent_bank", "8", "--understanding_batch", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    model = pretrain.build_model(seed=0, llm_hidden=32, llm_layers=1, vit_hidden=16, vit_layers=1)
    with pytest.raises(ValueError, match="--generation_every 1"):
        pretrain.train_joint(model, pretrain.parse_args(), random.Random(0))
    monkeypatch.setattr(sys, "argv", [*argv, "--generation_every", "1"])
    args = pretrain.parse_args()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    pretrain.train_joint(model, args, random.Random(0))
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    generation_side = set(model.generation_parameter_names())
    assert changed and changed <= generation_side
