"""Parity with the official BAGEL code, on golden values it produced at a tiny random configuration.

The fixture folder (official layout + `cases.json` / `cases.safetensors`) is tests/fixtures/bagel_tiny, or the folder
`BAGEL_FIXTURE_DIR` names. Select these tests with `pytest -k bagel_parity`.
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trl_srum.models.bagel import BagelModel, SamplerSettings
from trl_srum.models.bagel.generation import SamplingTrace, generate_image_latents, generate_text_ids
from trl_srum.models.bagel.image_processing import grid_position_ids, patchify, unpatchify

from ...helpers import golden_fixture, requires_fixture


FIXTURE_DIR = golden_fixture("bagel_tiny", "BAGEL_FIXTURE_DIR")
pytestmark = requires_fixture(FIXTURE_DIR)

# The fixture README's tolerances: single forwards to 1e-4, values compounded over several sampler steps to 1e-3.
SINGLE = {"atol": 1e-4, "rtol": 1e-4}
COMPOUNDED = {"atol": 1e-3, "rtol": 1e-3}


@pytest.fixture(scope="module")
def model() -> BagelModel:
    return BagelModel.from_pretrained(FIXTURE_DIR).eval()


@pytest.fixture(scope="module")
def cases() -> dict:
    with open(FIXTURE_DIR / "cases.json") as file:
        return json.load(file)


@pytest.fixture(scope="module")
def tensors() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE_DIR / "cases.safetensors")


def settings_of(case: dict) -> SamplerSettings:
    settings = dict(case["settings"])
    settings["cfg_interval"] = tuple(settings["cfg_interval"])
    return SamplerSettings(**settings)


@torch.no_grad()
def test_bagel_parity_vae(model, tensors):
    image = tensors["vae.image"][0]
    posterior = model.vae.encode(image[None]).latent_dist
    torch.testing.assert_close(posterior.mean, tensors["vae.mean_raw"], **SINGLE)
    torch.testing.assert_close(posterior.logvar, tensors["vae.logvar"], **SINGLE)

    patch_size = model.config.latent_patch_size
    mean_tokens = model.encode_pixels(image)
    torch.testing.assert_close(mean_tokens, patchify(tensors["vae.mean_normalized"][0], patch_size), **SINGLE)
    sampled_tokens = model.encode_pixels(image, noise=tensors["vae.posterior_eps"][0])
    torch.testing.assert_close(sampled_tokens, patchify(tensors["vae.sample_normalized"][0], patch_size), **SINGLE)

    grid = model.latent_grid((image.shape[2], image.shape[1]))
    torch.testing.assert_close(model.decode_latent_tokens(mean_tokens, grid), tensors["vae.decoded"][0], **SINGLE)


@torch.no_grad()
def test_bagel_parity_gen_velocity(model, cases, tensors):
    case = cases["gen_velocity"]
    samples = case["samples"]
    counts = [sample["num_latent_tokens"] for sample in samples]
    x_t = tensors["gen_velocity.x_t_tokens"].split(counts)
    t = torch.stack([tensors["gen_velocity.t_per_token"][sum(counts[:i])] for i in range(len(counts))])
    inputs = model.pack_flow_inputs(
        [sample["text_ids"] for sample in samples], x_t, [tuple(s["latent_hw_tokens"]) for s in samples], t
    )

    # The packing reproduces the official layout token for token.
    torch.testing.assert_close(inputs["text_ids"], tensors["gen_velocity.packed_text_ids"])
    torch.testing.assert_close(inputs["text_indexes"], tensors["gen_velocity.packed_text_indexes"])
    torch.testing.assert_close(inputs["latent_indexes"], tensors["gen_velocity.packed_vae_token_indexes"])
    torch.testing.assert_close(inputs["position_ids"], tensors["gen_velocity.packed_position_ids"])
    torch.testing.assert_close(inputs["latent_position_ids"], tensors["gen_velocity.packed_latent_position_ids"])
    for index, length in enumerate(case["sample_lens"]):
        expected_mask = tensors[f"gen_velocity.attention_mask_sample{index}"]
        torch.testing.assert_close(inputs["attention_mask"][index, :length, :length], expected_mask)

    velocity = model(**inputs).velocity
    torch.testing.assert_close(velocity, tensors["gen_velocity.v_pred"], **SINGLE)
    mse = (velocity - tensors["gen_velocity.v_target"]).pow(2).mean()
    torch.testing.assert_close(mse, torch.tensor(case["mse"]), **SINGLE)


@torch.no_grad()
def test_bagel_parity_und_logits(model, cases, tensors):
    case = cases["und_logits"]
    pixels = tensors["und.pixels"]
    patch_size = model.config.vit_config.patch_size
    torch.testing.assert_close(patchify(pixels, patch_size), tensors["und.vit_patches"])
    grid = tuple(case["vit_grid_hw"])
    position_ids = grid_position_ids(grid, model.config.vit_max_num_patch_per_side)
    torch.testing.assert_close(position_ids, tensors["und.vit_position_ids"])

    vit_out = model.vit_model.vision_model(
        tensors["und.vit_patches"][None], position_ids[None], torch.ones(1, len(position_ids), dtype=torch.bool)
    )[0]
    torch.testing.assert_close(vit_out, tensors["und.vit_out"], **SINGLE)
    torch.testing.assert_close(
        model.embed_images_for_understanding([pixels])[0], tensors["und.vit_llm_input"], **SINGLE
    )

    cache = model.prefill_images(model.new_cache(1), [pixels])
    assert cache.lengths.tolist() == [case["kv_len_after_image"]]
    output = model.prefill_text(cache, [case["text_ids"]], output_logits=True)
    assert output.cache.lengths.tolist() == [case["kv_len_after_text"]]
    assert output.cache.next_positions.tolist() == [case["rope_after_text"]]
    torch.testing.assert_close(output.logits[0], tensors["und.text_logits"], **SINGLE)
    assert output.logits[0].argmax(-1).tolist() == case["greedy_argmax_per_position"]


@torch.no_grad()
def test_bagel_parity_greedy_text(model, cases, tensors):
    case = cases["greedy_text"]
    cache = model.prefill_images(model.new_cache(1), [tensors["greedy.pixels"]])
    cache = model.prefill_text(cache, [case["text_ids"]]).cache
    assert (cache.lengths.item(), cache.next_positions.item()) == (case["context_kv_len"], case["context_rope"])

    expected_logits = tensors["greedy.step_logits"]
    output = generate_text_ids(model, cache, max_new_tokens=len(expected_logits), output_logits=True)
    torch.testing.assert_close(output.logits[0], expected_logits, **SINGLE)
    assert output.token_ids[0][: len(case["generated_ids"])] == case["generated_ids"]


def check_sampling_trace(model, trace, latents, grid, case, tensors, prefix):
    steps = len(case["step_t"])
    assert len(trace.timesteps) == steps
    torch.testing.assert_close(torch.tensor(trace.timesteps), tensors[f"{prefix}.step_t"])
    assert trace.guided_steps == case["steps_with_uncond"]
    for step in range(steps):
        tolerance = SINGLE if step == 0 else COMPOUNDED
        torch.testing.assert_close(trace.x_t[step][0], tensors[f"{prefix}.step_x_t"][step], **tolerance)
        torch.testing.assert_close(trace.v_cond[step][0], tensors[f"{prefix}.step_v_cond"][step], **tolerance)
        torch.testing.assert_close(trace.velocity[step][0], tensors[f"{prefix}.step_v"][step], **tolerance)
    for row, step in enumerate(trace.guided_steps):
        tolerance = SINGLE if step == 0 else COMPOUNDED
        torch.testing.assert_close(
            trace.v_uncond_text[row][0], tensors[f"{prefix}.step_v_uncond_text"][row], **tolerance
        )

    torch.testing.assert_close(latents[0], tensors[f"{prefix}.final_latent_tokens"], **COMPOUNDED)
    patch_size = model.config.latent_patch_size
    torch.testing.assert_close(
        unpatchify(latents[0], grid, patch_size), tensors[f"{prefix}.final_latent"], **COMPOUNDED
    )
    decoded = model.decode_latent_tokens(latents[0], grid)
    torch.testing.assert_close(decoded, tensors[f"{prefix}.decoded"][0], **COMPOUNDED)
    image = torch.from_numpy(np.array(model.decode_latents([latents[0]], [grid])[0]))
    assert (image.int() - tensors[f"{prefix}.image_uint8"].int()).abs().max() <= 1


@torch.no_grad()
def test_bagel_parity_t2i_sample(model, cases, tensors):
    case = cases["t2i_sample"]
    grid = tuple(case["latent_hw_tokens"])
    trace = SamplingTrace()
    latents = generate_image_latents(
        model,
        [case["prompt_ids"]],
        grid=grid,
        noise=tensors["t2i.init_noise"][None],
        settings=settings_of(case),
        trace=trace,
    )
    check_sampling_trace(model, trace, latents, grid, case, tensors, "t2i")


@torch.no_grad()
def test_bagel_parity_think_t2i(model, cases, tensors):
    case = cases["think_t2i"]
    # The official greedy think decoding, from the context after the user prompt.
    cache = model.prefill_text(model.new_cache(1), [case["system_prompt_ids"]]).cache
    cache = model.prefill_text(cache, [case["prompt_ids"]]).cache
    expected_logits = tensors["think.greedy_think_logits"]
    thought = generate_text_ids(model, cache, max_new_tokens=len(expected_logits), output_logits=True)
    torch.testing.assert_close(thought.logits[0], expected_logits, **SINGLE)
    assert thought.token_ids[0][: len(case["greedy_think_ids_max5"])] == case["greedy_think_ids_max5"]

    # The image, conditioned on the forced reasoning; the text-unconditional branch keeps only the system prompt.
    grid = tuple(case["latent_hw_tokens"])
    trace = SamplingTrace()
    latents = generate_image_latents(
        model,
        [case["prompt_ids"]],
        grid=grid,
        noise=tensors["think.init_noise"][None],
        settings=settings_of(case),
        system_prompt_ids=case["system_prompt_ids"],
        reasoning_ids=[case["forced_reasoning_ids"]],
        trace=trace,
    )
    check_sampling_trace(model, trace, latents, grid, case, tensors, "think")


def test_patchify_of_a_batch_is_the_patchify_of_each_image():
    # The batched pretraining paths (VAE latents, ViT patches) rely on this; the parity above pins one image's layout.
    images = torch.randn(3, 4, 16, 24)
    batched = patchify(images, 2)
    assert batched.shape == (3, 8 * 12, 2 * 2 * 4)
    torch.testing.assert_close(batched, torch.stack([patchify(image, 2) for image in images]), rtol=0, atol=0)
    torch.testing.assert_close(patchify(images[None], 2)[0], batched, rtol=0, atol=0)
