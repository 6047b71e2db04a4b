"""Parity with the official BLIP3o code, on golden values it produced at a tiny random configuration.

The fixture folder is tests/fixtures/blip3o_tiny, or the folder `BLIP3O_FIXTURE_DIR` names. Every case its
`cases.json` lists is run, and every tensor a case lists must be either an input of the test or a value the test
recomputes, so a golden tensor can never be silently ignored. Select these tests with `pytest -k blip3o_parity`.
"""

import json
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file

from trl_srum.models.blip3o import Blip3oModel
from trl_srum.models.blip3o.sampling import flow_scheduler, flow_sigmas, sample_latents

from ...helpers import golden_fixture, requires_fixture


FIXTURE_DIR = golden_fixture("blip3o_tiny", "BLIP3O_FIXTURE_DIR")
pytestmark = requires_fixture(FIXTURE_DIR)

# The fixture README's tolerances: tensors to 1e-4 absolute, losses to 1e-5 relative, integers exactly.
LOSSES = {"b.mse", "b.mse_per_sample", "b2.loss"}


def listed_cases() -> dict[str, list[str]]:
    """Tensor names of `cases.json` grouped by case: `a.promptN` for each prompt of case (a), else the first part."""
    if not FIXTURE_DIR.is_dir():
        return {}
    with open(FIXTURE_DIR / "cases.json") as file:
        names = json.load(file)["tensors"]
    cases = defaultdict(list)
    for name in names:
        parts = name.split(".")
        cases[".".join(parts[:2]) if parts[0] == "a" else parts[0]].append(name)
    return dict(cases)


CASES = listed_cases()


def cases_of(kind: str) -> list[str]:
    return sorted(case for case in CASES if case.split(".")[0] == kind)


def check_case(case: str, inputs: set[str], computed: dict[str, torch.Tensor], golden: dict[str, torch.Tensor]):
    """Compare every listed tensor of `case` that is not an input with its recomputed value."""
    for name in CASES[case]:
        key = name.removeprefix(case + ".")
        if key in inputs:
            continue
        assert key in computed, f"{name} is listed in cases.json but this test does not recompute it"
        expected, actual = golden[name], computed[key]
        if not expected.is_floating_point():
            assert torch.equal(actual.to(expected.dtype), expected), name
        elif name in LOSSES:
            torch.testing.assert_close(actual.reshape(expected.shape), expected, rtol=1e-5, atol=0, msg=name)
        else:
            torch.testing.assert_close(actual.reshape(expected.shape), expected, rtol=0, atol=1e-4, msg=name)


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE_DIR / "cases.safetensors")


@pytest.fixture(scope="module")
def model() -> Blip3oModel:
    with open(FIXTURE_DIR / "config.json") as file:
        official_config = json.load(file)
    with open(FIXTURE_DIR / "dit_config.json") as file:
        dit_config = json.load(file)
    state_dict = load_file(FIXTURE_DIR / "weights.safetensors")
    return Blip3oModel.from_official_state_dict(state_dict, official_config, dit_config=dit_config).eval()


@pytest.mark.parametrize("case", cases_of("a"))
@torch.no_grad()
def test_blip3o_parity_condition(model, golden, case):
    prompt_ids = golden[f"{case}.input_ids"]
    grid = model.latent_grid()
    latents = torch.zeros(grid[0] * grid[1], model.config.dit_config.in_channels)
    flow_inputs = model.prepare_flow_inputs_from_ids([prompt_ids], [latents], [grid], torch.tensor([0.5]))
    computed = {
        "full_input_ids": flow_inputs["prompt_input_ids"][0],
        "condition": model.encode_prompts([prompt_ids]),
    }
    check_case(case, {"input_ids"}, computed, golden)


@pytest.mark.skipif(len(cases_of("a")) < 2, reason="needs at least two prompts of case (a)")
@torch.no_grad()
def test_blip3o_parity_condition_batched(model, golden):
    # prompts of different lengths share one padded backbone forward, and each keeps its own condition
    cases = cases_of("a")
    conditions = model.encode_prompts([golden[f"{case}.input_ids"] for case in cases])
    for case, condition in zip(cases, conditions):
        torch.testing.assert_close(condition, golden[f"{case}.condition"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", cases_of("b"))
@torch.no_grad()
def test_blip3o_parity_velocity(model, golden, case):
    x0, noise, timesteps = golden["b.x0"], golden["b.noise"], golden["b.timesteps"]
    sigmas = timesteps / 1000
    x_t = (1 - sigmas[:, None, None, None]) * x0 + sigmas[:, None, None, None] * noise
    pred = model.dit(x_t, timesteps, golden["b.condition"])
    per_sample = (pred - (noise - x0)).pow(2).mean(dim=(1, 2, 3))
    computed = {
        "sigmas": sigmas,
        "x_t": x_t,
        "target": noise - x0,
        "pred": pred,
        "pred_null_condition": model.dit(x_t, timesteps, torch.zeros_like(golden["b.condition"])),
        "mse": (pred - (noise - x0)).pow(2).mean(),
        "mse_per_sample": per_sample,
    }
    check_case(case, {"x0", "noise", "timesteps", "condition"}, computed, golden)


@pytest.mark.parametrize("case", cases_of("b2"))
@torch.no_grad()
def test_blip3o_parity_training_forward(model, golden, case):
    """The official training forward, through the SRUM protocol: prompt ids in, one velocity per latent token out."""
    input_ids, attention_mask, labels = golden["b2.input_ids"], golden["b2.attention_mask"], golden["b2.labels"]
    query_start = golden["b2.i_s_pos"]
    # the collator's layout: the unlabelled prompt, then "[IMG]" and the query placeholders, right-padded
    num_queries = model.config.num_queries
    prompts = []
    for row, start in enumerate(query_start.tolist()):
        assert input_ids[row, start - 1] == model.config.image_start_token_id
        assert (labels[row, : start - 1] == -100).all()
        assert (
            attention_mask[row, : start + num_queries].all() and not attention_mask[row, start + num_queries :].any()
        )
        prompts.append(input_ids[row, : start - 1])

    # the EVA-CLIP stand-in's 32x32 row-major tokens, 4x4-average-pooled, are the NCHW latents
    batch_size, _, channels = golden["b2.eva_tokens"].shape
    eva_grid = golden["b2.eva_tokens"].transpose(1, 2).reshape(batch_size, channels, 32, 32)
    x0, noise = golden["b2.x0"], golden["b2.noise"]
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(eva_grid, 4), x0, rtol=0, atol=1e-4)

    # the official timestep draw: index floor(u * 1000) into the training scheduler's timesteps 1000..1
    timesteps = flow_scheduler().timesteps[(golden["b2.u"] * 1000).long()]
    sigmas = timesteps / 1000
    x_t = (1 - sigmas[:, None, None, None]) * x0 + sigmas[:, None, None, None] * noise
    dropped = golden["b2.drop_mask"].bool()
    inputs = model.prepare_flow_inputs_from_ids(
        [None if drop else ids for ids, drop in zip(prompts, dropped)],
        list(x_t.flatten(2).transpose(1, 2)),
        [(8, 8)] * batch_size,
        sigmas,
    )
    velocity = model(**inputs).velocity.view(batch_size, -1, channels).transpose(1, 2).reshape_as(x0)
    computed = {"timesteps": timesteps, "loss": torch.nn.functional.mse_loss(velocity, noise - x0)}
    inputs_listed = {"input_ids", "attention_mask", "labels", "i_s_pos", "eva_tokens", "x0", "noise", "u", "drop_mask"}
    check_case(case, inputs_listed, computed, golden)


@pytest.mark.parametrize("case", cases_of("c"))
@torch.no_grad()
def test_blip3o_parity_sampler(model, golden, case):
    with open(FIXTURE_DIR / "cases.json") as file:
        settings = json.load(file)["c"]
    num_steps, guidance_scale = settings["num_inference_steps"], settings["guidance_scale"]
    condition, noise = golden["c.condition"], golden["c.initial_noise"]

    scheduler = flow_scheduler()
    scheduler.set_timesteps(sigmas=flow_sigmas(num_steps))
    dit_timesteps = scheduler.timesteps.long()
    # the DiT at each step, on the golden latents entering that step
    latents_in = torch.cat([noise[None], golden["c.latents_per_step"][:-1]])
    velocity_uncond = torch.stack(
        [model.dit(x, t.expand(len(x)), torch.zeros_like(condition)) for x, t in zip(latents_in, dit_timesteps)]
    )
    velocity_cond = torch.stack([model.dit(x, t.expand(len(x)), condition) for x, t in zip(latents_in, dit_timesteps)])
    # the whole sampler from the golden noise
    per_step = []
    final = sample_latents(
        model.dit,
        condition,
        noise,
        num_inference_steps=num_steps,
        guidance_scale=guidance_scale,
        callback_on_step_end=lambda step, latents: per_step.append(latents),
    )
    computed = {
        "sigmas": scheduler.sigmas,
        "scheduler_timesteps": scheduler.timesteps,
        "dit_timesteps": dit_timesteps,
        "velocity_uncond": velocity_uncond,
        "velocity_cond": velocity_cond,
        "latents_per_step": torch.stack(per_step),
        "final_latents": final,
        "final_tokens": final.flatten(2).transpose(1, 2),
    }
    check_case(case, {"condition", "initial_noise"}, computed, golden)


def test_blip3o_parity_scheduler_config():
    with open(FIXTURE_DIR / "scheduler_config.json") as file:
        expected = json.load(file)
    config = flow_scheduler().config
    assert {key: config[key] for key in expected if not key.startswith("_")} == {
        key: value for key, value in expected.items() if not key.startswith("_")
    }
