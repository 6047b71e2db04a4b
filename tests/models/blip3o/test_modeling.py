import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from trl_srum.models.blip3o.tiny import TINY_FEATURE_DIM, tiny_blip3o
from trl_srum.protocol import UnifiedModel


PROMPTS = ["a red cube", None, "two dogs on a sofa"]


def flow_batch(model, prompts=PROMPTS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = [torch.randn(64, TINY_FEATURE_DIM, generator=generator) for _ in prompts]
    timesteps = torch.rand(len(prompts), generator=generator)
    return model.prepare_flow_inputs(prompts, latents, [(8, 8)] * len(prompts), timesteps), latents, timesteps


def test_implements_protocol(tiny_model):
    assert isinstance(tiny_model, UnifiedModel)
    assert tiny_model.latent_grid((1024, 1024)) == tiny_model.latent_grid((32, 64)) == (8, 8)
    assert tiny_model.supports_grounding


@torch.no_grad()
def test_flow_forward_matches_the_dit_on_each_condition(tiny_model):
    inputs, latents, timesteps = flow_batch(tiny_model)
    velocity = tiny_model(**inputs).velocity
    assert velocity.shape == (3 * 64, TINY_FEATURE_DIM)
    # SRUM's t in [0, 1] reaches the DiT as t * 1000; a None prompt gets the all-zero condition
    conditions = tiny_model.encode_prompts(tiny_model.tokenize_generation_prompts([PROMPTS[0], PROMPTS[2]]))
    conditions = torch.stack([conditions[0], torch.zeros_like(conditions[0]), conditions[1]])
    grids = torch.stack(latents).transpose(1, 2).reshape(3, TINY_FEATURE_DIM, 8, 8)
    expected = tiny_model.dit(grids, timesteps * 1000, conditions).flatten(2).transpose(1, 2)
    torch.testing.assert_close(velocity.view(3, 64, -1), expected, rtol=0, atol=1e-5)
    # the samples are packed in order and do not see each other
    first = tiny_model.prepare_flow_inputs(PROMPTS[:1], latents[:1], [(8, 8)], timesteps[:1])
    torch.testing.assert_close(tiny_model(**first).velocity, velocity[:64], rtol=0, atol=1e-5)


@torch.no_grad()
def test_a_batch_of_dropped_prompts_skips_the_backbone(tiny_model):
    inputs, latents, timesteps = flow_batch(tiny_model, prompts=[None, None])
    assert inputs["prompt_input_ids"].shape == (0, 0)
    grids = torch.stack(latents).transpose(1, 2).reshape(2, TINY_FEATURE_DIM, 8, 8)
    expected = tiny_model.dit(grids, timesteps * 1000, torch.zeros(2, 64, 64)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tiny_model(**inputs).velocity.view(2, 64, -1), expected, rtol=0, atol=1e-6)


def test_only_generator_parameters_get_gradients():
    model = tiny_blip3o(with_decoder=False).train()
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == set(model.generation_parameter_names())
    assert not any(name.startswith("backbone.") for name in trainable)

    inputs, _, _ = flow_batch(model)
    model(**inputs).velocity.pow(2).mean().backward()
    assert all(parameter.grad is None for parameter in model.backbone.parameters())
    # the queries learn through the frozen backbone, the DiT directly
    assert model.latent_queries.grad.abs().sum() > 0
    assert model.dit.layers[0].attn2.to_k.weight.grad.abs().sum() > 0


def test_lora_preset_touches_only_the_dit():
    model = tiny_blip3o(with_decoder=False)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=model.generation_lora_target_modules))
    adapted = {name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert adapted and all(".dit.layers." in name for name in adapted)
    # attention and SwiGLU linears of every block: 3 + 4 + 3
    assert len(adapted) == 10 * model.config.dit_config.n_layers
    trainable = [name for name, parameter in peft_model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)

    peft_model.train()
    inputs, _, _ = flow_batch(model)
    peft_model(**inputs).velocity.pow(2).mean().backward()
    assert all(parameter.grad is None for name, parameter in peft_model.named_parameters() if "lora_" not in name)
    assert any(parameter.grad.abs().sum() > 0 for name, parameter in peft_model.named_parameters() if "lora_B" in name)


def test_gradient_checkpointing_keeps_the_gradients():
    model = tiny_blip3o(with_decoder=False).train()
    inputs, _, _ = flow_batch(model)
    model(**inputs).velocity.pow(2).mean().backward()
    expected = {name: parameter.grad.clone() for name, parameter in model.dit.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.dit.gradient_checkpointing
    model(**inputs).velocity.pow(2).mean().backward()
    for name, parameter in model.dit.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], msg=name)


@torch.no_grad()
def test_batched_generation_equals_per_prompt_generation(tiny_model):
    prompts = ["a red cube", "two dogs on a sofa", "a blue sphere"]
    settings = {"image_size": (32, 32), "num_inference_steps": 3, "decoder_num_inference_steps": 2}

    def generators():
        return [torch.Generator().manual_seed(seed) for seed in (11, 12, 13)]

    batched = tiny_model.generate_images(prompts, generators=generators(), **settings)
    for index, prompt in enumerate(prompts):
        (alone,) = tiny_model.generate_images([prompt], generators=generators()[index : index + 1], **settings)
        torch.testing.assert_close(alone.latents, batched[index].latents, rtol=0, atol=1e-5)
        difference = np.asarray(alone.image, dtype=np.int16) - np.asarray(batched[index].image, dtype=np.int16)
        assert np.abs(difference).max() <= 1
    assert batched[0].image.size == (32, 32) and batched[0].grid == (8, 8)
    assert batched[0].latents.shape == (64, TINY_FEATURE_DIM) and batched[0].latents.device.type == "cpu"
    # the generators are the only randomness: other seeds, other latents
    other = tiny_model.generate_latents(
        prompts[:1], generators=[torch.Generator().manual_seed(99)], num_inference_steps=3
    )
    assert not torch.allclose(other[0].flatten(1).T, batched[0].latents)


@pytest.mark.parametrize(
    ("latents", "grids", "timesteps", "message"),
    [
        ([torch.zeros(63, TINY_FEATURE_DIM)], [(8, 8)], [0.5], "shape"),
        ([torch.zeros(64, TINY_FEATURE_DIM + 1)], [(8, 8)], [0.5], "shape"),
        ([torch.zeros(64, TINY_FEATURE_DIM)], [(4, 16)], [0.5], "grid"),
        ([torch.zeros(64, TINY_FEATURE_DIM)], [(8, 8)], [1.5], r"\[0, 1\]"),
        ([torch.zeros(64, TINY_FEATURE_DIM)], [(8, 8)], [0.5, 0.5], "one of each"),
    ],
)
def test_bad_flow_inputs_are_named(tiny_model, latents, grids, timesteps, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.prepare_flow_inputs(["a cat"], latents, grids, torch.tensor(timesteps))


def test_bad_generation_requests_are_named(tiny_model):
    with pytest.raises(ValueError, match="think"):
        tiny_model.generate_images(["a cat"], generators=[torch.Generator()], image_size=(32, 32), think=True)
    with pytest.raises(ValueError, match="one per prompt"):
        tiny_model.generate_latents(["a cat", "a dog"], generators=[torch.Generator()])
    with pytest.raises(ValueError, match=r"\(33, 32\)"):
        tiny_model.latent_grid((33, 32))
    with pytest.raises(NotImplementedError, match="EVA-CLIP"):
        tiny_model.encode_images([])
    with pytest.raises(ValueError, match=r"\(63, 32\)"):
        tiny_model.decode_latents([torch.zeros(63, TINY_FEATURE_DIM)], [(8, 8)], image_size=(32, 32))


def test_missing_companions_are_named():
    model = tiny_blip3o(with_decoder=False)
    with pytest.raises(RuntimeError, match="load_decoder"):
        model.decode_latents([torch.zeros(64, TINY_FEATURE_DIM)], [(8, 8)], image_size=(32, 32))
    model.processor = None
    with pytest.raises(RuntimeError, match="processor"):
        model.tokenize_generation_prompts(["a cat"])
