"""The fast pretraining pipeline of the shapes-world BAGEL: its data, its training forward and its resumable loop."""

import random
import runpy
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

from trl_srum.models.bagel import BagelModel
from trl_srum.models.bagel.image_processing import pil_to_tensor
from trl_srum.shapes import describe, detect, is_heldout, judge, render_scene, validate_spec
from trl_srum.shapes import pretraining as pt
from trl_srum.shapes import pretraining_data as data
from trl_srum.shapes import training_forward as forward
from trl_srum.shapes.splits import category_of

from ..helpers import REPO_ROOT


TINY = pt.ModelSize(llm_hidden=32, llm_layers=1, vit_hidden=32, vit_layers=1)
SAMPLING = {"num_timesteps": 3, "cfg_text_scale": 1.0}


@pytest.fixture(scope="module")
def model():
    return pt.build_model(TINY, seed=0).eval()


def _scenes(count: int, seed: int = 0, degrade: float = 0.0) -> list[data.Scene]:
    rng = random.Random(seed)
    return data.render_scenes([data.random_train_spec(rng) for _ in range(count)], rng, 64, degrade)


@torch.no_grad()
def test_fast_flow_forward_equals_the_packed_forward(model):
    rng = random.Random(0)
    prompts = [describe(data.random_train_spec(rng)) for _ in range(3)]
    ids = data.wrapped_ids(model, prompts)
    lengths = torch.tensor([len(row) for row in ids])
    lengths[1] = 0  # a dropped caption, as for classifier-free guidance
    x_t, t = torch.randn(3, 64, model.config.latent_dim), torch.rand(3)
    fast = forward.flow_velocity(model, data.pad_rows(ids), lengths, x_t, t)
    packed = model(**model.prepare_flow_inputs([prompts[0], None, prompts[2]], list(x_t), [(8, 8)] * 3, t))
    torch.testing.assert_close(fast.flatten(0, 1), packed.velocity, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_fast_answer_forward_equals_asking_each_question_on_the_image_cache(model):
    scenes = _scenes(2, degrade=0.5)
    rows = data.understanding_rows(model, scenes, random.Random(0), 64, row_budget=96)
    logits = forward.answer_logits(model, rows)
    for row, scene in enumerate(scenes):
        cache = model.prefill_images(model.new_cache(1), [model.understanding_pixels(scene.image)])
        for segment in range(1, int(rows.segments[row].max()) + 1):
            where = rows.segments[row] == segment
            reference = model.forward_text(
                cache, [rows.tokens[row][where].tolist()], cache_rows=[0], output_logits=True, update_cache=False
            ).logits[0]
            torch.testing.assert_close(logits[row][where], reference, atol=1e-5, rtol=1e-5)


def test_renders_are_read_by_the_oracle_as_their_spec_and_batch_like_single_images():
    scenes = _scenes(24)
    for scene in scenes:
        assert judge(scene.reading, scene.spec)["correct"]
        read = sorted((d.color, d.shape) for d in detect(scene.image).detections)
        assert read == sorted((d.color, d.shape) for d in scene.reading.detections)
    pixels = data.pixels_of([scene.image for scene in scenes])
    assert torch.equal(pixels, torch.stack([pil_to_tensor(scene.image) for scene in scenes]))


@torch.no_grad()
def test_batched_latents_equal_the_models_own_encoding(model):
    images = [scene.image for scene in _scenes(3)]
    batched = data.encode_latents(model, data.pixels_of(images))
    single = torch.stack(model.encode_images(images))
    # oneDNN picks other convolution kernels for a batch than for one image; they agree to about 1e-3.
    assert (batched - single).abs().max() < 1e-2 * single.abs().max()


def test_packed_rows_hold_each_question_with_its_answer_as_targets(model):
    scene = _scenes(1, seed=3)[0]
    questions = data.scene_question_list(scene, random.Random(0), 64)
    tokens, segments, positions, targets = data.pack_questions(model, [questions], row_budget=400)
    tokenizer = model.tokenizer
    for segment, labelled in enumerate(questions, start=1):
        where = segments[0] == segment
        assert positions[0][where].tolist() == list(range(1, int(where.sum()) + 1))  # each continues the image
        learned = targets[0][where]
        answer = tokenizer.decode(learned[learned != -100].tolist(), skip_special_tokens=True)
        assert answer.strip() == labelled.answer
    assert (segments[0] == 0).sum() == (tokens[0] == 0).sum()  # padding only after the last question


def test_layout_questions_are_balanced_and_labelled_by_what_the_image_shows():
    scene = _scenes(1, seed=5)[0]
    first, second = data.scene_question_list(scene, random.Random(1), 64)[:2]
    assert (first.kind, first.answer, second.kind, second.answer) == ("layout_match", "yes", "layout_match", "no")
    # An own sample is also asked about the prompt it was drawn from, labelled by the oracle's verdict.
    prompt = {"objects": [{"shape": "circle", "color": "red", "count": 1}], "relation": None}
    own = data.Scene(scene.image, scene.reading, scene.spec, prompt_spec=prompt)
    asked = data.scene_question_list(own, random.Random(1), 64)[2]
    expected = "yes" if judge(scene.reading, prompt)["correct"] else "no"
    assert describe(prompt) in asked.question and asked.answer == expected


def test_caption_noise_is_seeded_never_held_out_and_only_where_composition_is_stated():
    mix = data.WorldMix(wrong_relation=0.5, swapped_colours=0.5, wrong_count=0.5)
    rng = random.Random(0)
    changed = {category: [] for category in mix.category_weights}
    for _ in range(600):
        spec = data.random_train_spec(rng)
        stated = data.noisy_caption(spec, mix, rng)
        assert not is_heldout(stated) and category_of(stated) == category_of(spec)
        changed[category_of(spec)].append(stated != validate_spec(spec))
    assert not any(changed["single_object"]) and not any(changed["two_objects"])
    for category in ("counting", "colour_binding", "position", "complex"):
        assert 0.25 < np.mean(changed[category]) < 0.75, category
    quiet = data.WorldMix(wrong_relation=0.0, swapped_colours=0.0, wrong_count=0.0)
    spec = data.random_train_spec(random.Random(1))
    assert data.noisy_caption(spec, quiet, random.Random(2)) == validate_spec(spec)


def test_own_samples_are_labelled_by_the_oracle_and_stay_in_the_training_split(model):
    scenes = data.own_scenes(model, 6, random.Random(0), 64, SAMPLING)
    for scene in scenes:
        assert not is_heldout(scene.spec) and not is_heldout(scene.prompt_spec)
        assert judge(detect(scene.image), scene.spec)["correct"]


@torch.no_grad()
def test_matching_the_connector_scale_makes_image_content_as_loud_as_positions():
    model = pt.build_model(TINY, seed=0)
    pixels = data.pixels_of([scene.image for scene in _scenes(4)])

    def ratio() -> float:
        features, positions = forward.vit_features(model, pixels)
        table = model.vit_pos_embed(positions)
        return (model.connector(features).pow(2).mean() / table.pow(2).mean()).sqrt().item()

    assert ratio() < 0.3  # a fresh tiny connector whispers under the sin-cos table
    assert pt.match_connector_scale(model, pixels) > 3
    assert ratio() == pytest.approx(1.0, rel=1e-4)


def test_training_one_side_leaves_the_other_untouched():
    model = pt.build_model(TINY, seed=0)
    generation_side = set(model.generation_parameter_names())
    pt.select_trainable(model, "generation")
    assert {name for name, p in model.named_parameters() if p.requires_grad} == generation_side
    pt.select_trainable(model, "understanding")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not trainable & generation_side and any(name.startswith("vit_model.") for name in trainable)
    pt.select_trainable(model, "all")
    assert all(p.requires_grad != name.startswith("vae.") for name, p in model.named_parameters())


def _tiny_config(steps: int, **overrides) -> pt.PretrainConfig:
    settings = dict(
        steps=steps,
        steps_per_chunk=2,
        warmup=2,
        generation_batch=2,
        understanding_batch=2,
        row_budget=64,
        own_from=2,
        own_samples=4,
        bank_size=8,
        sampling=SAMPLING,
    )
    return pt.PretrainConfig(**{**settings, **overrides})


def _bank(model, folder, config: pt.PretrainConfig) -> data.GenerationBank:
    return data.load_or_build_bank(model, folder / "bank.pt", config.bank_size, config.mix, config.seed)


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_a_run_resumed_chunk_by_chunk_ends_exactly_where_an_uninterrupted_run_ends(tmp_path):
    model = pt.build_model(TINY, seed=0)
    bank = _bank(model, tmp_path, _tiny_config(4))
    whole = pt.train(model, bank, _tiny_config(4), tmp_path / "whole")

    resumed_model = pt.build_model(TINY, seed=0)
    pt.train(resumed_model, bank, _tiny_config(2), tmp_path / "chunks")  # a run stopped after its first chunk
    again = pt.build_model(TINY, seed=0)  # a new process: the same initial model, then the saved state
    resumed = pt.train(again, bank, _tiny_config(4), tmp_path / "chunks")

    assert resumed.step == whole.step == 4 and len(resumed.history) == 2
    assert resumed.history == whole.history
    final, expected = _weights(again), _weights(model)
    assert all(torch.equal(final[name], expected[name]) for name in expected)
    with pytest.raises(ValueError, match="other settings"):
        pt.train(pt.build_model(TINY, seed=0), bank, _tiny_config(4, lr=1e-2), tmp_path / "chunks")


def test_a_generation_only_run_changes_generation_weights_and_nothing_else(tmp_path):
    model = pt.build_model(TINY, seed=0)
    config = _tiny_config(2, train="generation", understanding_batch=0, own_samples=0)
    bank = _bank(model, tmp_path, config)
    before = _weights(model)
    pt.train(model, bank, config, tmp_path)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= set(model.generation_parameter_names())


def test_the_bank_file_is_reused_only_for_the_same_settings(tmp_path):
    model = pt.build_model(TINY, seed=0)
    bank = _bank(model, tmp_path, _tiny_config(2))
    again = _bank(model, tmp_path, _tiny_config(2))
    assert torch.equal(bank.latents, again.latents) and bank.stated == again.stated
    assert len(bank) == 8 and bank.latents.shape[1:] == (64, model.config.latent_dim)
    with pytest.raises(ValueError, match="other settings"):
        _bank(model, tmp_path, _tiny_config(2, seed=1))


def test_the_recipe_builds_and_saves_a_loadable_model(tmp_path, monkeypatch):
    source = tmp_path / "vae_source"
    pt.build_model(TINY, seed=0).save_pretrained(source)
    output = tmp_path / "run"
    sizes = [f"--{k}={v}" for k, v in asdict(TINY).items() if k != "image_size"]
    argv = ["pretrain.py", "--output_dir", str(output), "--vae_from", str(source), "--match_connector_scale"]
    argv += ["--steps=2", "--steps_per_chunk=2", "--bank_size=4", "--own_samples=0", "--understanding_batch=1"]
    argv += ["--generation_batch=2", "--row_budget=48", "--eval_per_category=0", *sizes]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO_ROOT / "recipes" / "shapes" / "pretrain.py"), run_name="__main__")
    loaded = BagelModel.from_pretrained(output)
    assert loaded.config.llm_config.hidden_size == TINY.llm_hidden
    assert (output / "pretrain_report.json").is_file() and (output / pt.STATE_FILE).is_file()


def test_render_scene_boxes_are_what_the_reading_of_a_render_holds():
    spec = data.random_train_spec(random.Random(7))
    image, objects = render_scene(spec, 64, 3)
    reading = data.reading_of_render(objects)
    assert [d.box for d in reading.detections] == [tuple(o["box"]) for o in objects]
    assert judge(reading, spec)["correct"] and judge(detect(image), spec)["correct"]


def test_training_a_vae_changes_it_fixes_its_latent_normalisation_and_freezes_it():
    model = pt.build_model(TINY, seed=0)
    before = {name: p.detach().clone() for name, p in model.vae.named_parameters()}
    report = pt.train_vae(model, steps=2, seed=0, batch=2)
    assert any(not torch.equal(p, before[name]) for name, p in model.vae.named_parameters())
    assert model.vae.config.scaling_factor == report["latent_scale"] == model.config.vae_config["scaling_factor"]
    assert model.vae.config.shift_factor == report["latent_shift"]
    assert not any(p.requires_grad for p in model.vae.parameters())


def test_a_timestep_shift_moves_training_towards_noise():
    bank = data.GenerationBank(
        specs=[{}] * 4,
        stated=[{}] * 4,
        captions=torch.zeros(4, 3, dtype=torch.long),
        lengths=torch.full((4,), 3),
        latents=torch.zeros(4, 64, 16),
    )
    index = torch.arange(4).repeat(500)
    plain = forward.flow_batch(bank, index, torch.Generator().manual_seed(0), 0.0)["t"]
    shifted = forward.flow_batch(bank, index, torch.Generator().manual_seed(0), 0.0, timestep_shift=2.0)["t"]
    assert torch.all(shifted >= plain) and (shifted > 0.8).float().mean() > 2 * (plain > 0.8).float().mean()
