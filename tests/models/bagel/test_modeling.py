import copy

import pytest
import torch

from trl_srum.models.bagel.tiny import tiny_bagel_model


def random_latents(model, grids, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(rows * cols, model.config.latent_dim, generator=generator) for rows, cols in grids]


@torch.no_grad()
def test_training_forward_equals_sampling_velocity(tiny_model):
    """The packed training forward and the cached sampling pass give the same velocity for the same x_t and t."""
    prompt_ids = tiny_model.tokenize(["a red circle", "two blue squares left of a star"]) + [None]
    grids = [(2, 3), (4, 2), (3, 3)]
    noisy = random_latents(tiny_model, grids)
    timesteps = torch.tensor([0.9, 0.3, 0.6])
    packed = tiny_model(**tiny_model.pack_flow_inputs(prompt_ids, noisy, grids, timesteps)).velocity
    assert packed.shape == (sum(len(x) for x in noisy), tiny_model.config.latent_dim)

    for ids, x_t, grid, t, expected in zip(prompt_ids, noisy, grids, timesteps, packed.split([len(x) for x in noisy])):
        cache = tiny_model.new_cache(1)
        if ids is not None:
            cache = tiny_model.prefill_text(cache, [ids]).cache
        velocity = tiny_model.predict_velocity(cache, x_t[None], t[None], grid)[0]
        torch.testing.assert_close(velocity, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_kv_cache_decoding_matches_one_forward(tiny_model):
    ids = tiny_model.wrap_text(tiny_model.tokenize(["there is a red circle above a blue square"])[0])
    full = tiny_model.forward_text(tiny_model.new_cache(1), [ids], output_logits=True).logits[0]
    cache = tiny_model.forward_text(tiny_model.new_cache(1), [ids[:4]]).cache
    steps = []
    for token in ids[4:]:
        output = tiny_model.forward_text(cache, [[token]], output_logits=True)
        cache = output.cache
        steps.append(output.logits[0][0])
    torch.testing.assert_close(torch.stack(steps), full[4:], atol=1e-5, rtol=1e-5)

    # Batched sequences of different lengths give the same logits as each alone.
    other = ids[:3]
    batched = tiny_model.forward_text(tiny_model.new_cache(2), [other, ids], output_logits=True).logits
    torch.testing.assert_close(batched[1], full, atol=1e-5, rtol=1e-5)


def flow_loss(model, seed=0):
    grids = [(2, 2), (3, 2)]
    latents, noise = random_latents(model, grids, seed), random_latents(model, grids, seed + 1)
    timesteps = torch.tensor([0.7, 0.2])
    noisy = [(1 - t) * x + t * n for x, n, t in zip(latents, noise, timesteps)]
    inputs = model.prepare_flow_inputs(["a red circle", None], noisy, grids, timesteps)
    target = torch.cat([n - x for x, n in zip(latents, noise)])
    return (model(**inputs).velocity - target).pow(2).mean()


def understanding_logits(model):
    with torch.no_grad():
        ids = model.wrap_text(model.tokenize(["is there a red circle ?"])[0])
        return model.forward_text(model.new_cache(1), [ids], output_logits=True).logits[0]


def test_freezing_understanding_gives_zero_gradients_elsewhere():
    model = tiny_bagel_model(seed=1).train()
    generation_names = set(model.generation_parameter_names())
    assert generation_names and all(
        "_moe_gen" in name or name.split(".")[0] in ("time_embedder", "vae2llm", "llm2vae")
        for name in generation_names
    )
    assert any(name.endswith("norm_moe_gen.weight") and "layers" not in name for name in generation_names)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in generation_names)
    before = understanding_logits(model)

    flow_loss(model).backward()
    for name, parameter in model.named_parameters():
        if name in generation_names:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    assert torch.equal(understanding_logits(model), before)  # the judge cannot drift


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_bagel_model(seed=2).train()
    checkpointed = copy.deepcopy(model)
    with pytest.warns(FutureWarning):
        checkpointed.gradient_checkpointing_enable()
    assert checkpointed.language_model.model.layers[0].gradient_checkpointing
    flow_loss(model).backward()
    flow_loss(checkpointed).backward()
    for (name, parameter), other in zip(model.named_parameters(), checkpointed.parameters()):
        if parameter.grad is not None:
            torch.testing.assert_close(other.grad, parameter.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bad_inputs_name_the_problem(tiny_model):
    stride, max_side = tiny_model.config.latent_stride, tiny_model.config.max_latent_size
    with pytest.raises(ValueError, match=f"multiples of {stride}"):
        tiny_model.latent_grid((stride * 2 + 1, stride * 2))
    with pytest.raises(ValueError, match="max_latent_size"):
        tiny_model.latent_grid((stride * (max_side + 1), stride))
    with pytest.raises(ValueError, match=r"do not match its grid \(2, 2\)"):
        tiny_model.pack_flow_inputs([[5]], [torch.zeros(5, tiny_model.config.latent_dim)], [(2, 2)], torch.ones(1))
    with pytest.raises(ValueError, match="one of each per sample"):
        tiny_model.pack_flow_inputs(
            [[5], None], [torch.zeros(4, tiny_model.config.latent_dim)], [(2, 2)], torch.ones(1)
        )
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_model.prefill_text(tiny_model.new_cache(1), [[10**6]])
    with pytest.raises(ValueError, match="multiples of 14"):
        tiny_model.embed_images_for_understanding([torch.zeros(3, 20, 28)])
    with pytest.raises(ValueError, match="one per prompt"):
        tiny_model.generate_images(["a", "b"], generators=[torch.Generator()], image_size=(8, 8))
