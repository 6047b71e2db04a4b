"""bitsandbytes 8-bit and 4-bit loading through transformers, then a LoRA backward (CPU)."""

import pytest
import torch
from torch import nn

from trl_srum.models.bagel import BagelModel
from trl_srum.models.bagel.tiny import tiny_bagel_model


bnb = pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")
BitsAndBytesConfig = pytest.importorskip("transformers").BitsAndBytesConfig


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bagel")
    tiny_bagel_model(seed=8).save_pretrained(folder)
    return folder


def flow_inputs(model):
    generator = torch.Generator().manual_seed(0)
    noisy = [torch.randn(6, model.config.latent_dim, generator=generator)]
    return model.prepare_flow_inputs(["a red circle"], noisy, [(3, 2)], torch.tensor([0.4]))


def lora_backward(model):
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=model.generation_lora_target_modules)
    peft_model = peft.get_peft_model(model, lora).train()
    peft_model(**flow_inputs(model)).velocity.pow(2).mean().backward()
    trained = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert trained and all(p.grad is not None for p in trained)
    return peft_model


def assert_policy(model, quantized_type):
    layer = model.language_model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj_moe_gen, quantized_type)
    assert isinstance(layer.mlp.gate_proj, quantized_type)
    # The VAE and the generation adapters are never quantized; the VAE stays fp32.
    for module in (
        model.vae2llm,
        model.llm2vae,
        model.time_embedder.mlp[0],
        model.vae.encoder.mid_block.attentions[0].to_q,
    ):
        assert type(module) is nn.Linear
    assert model.vae.dtype == torch.float32


def test_8bit_loading_runs_a_forward_and_a_lora_backward(saved_tiny):
    reference = BagelModel.from_pretrained(saved_tiny).eval()
    model = BagelModel.from_pretrained(saved_tiny, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    assert_policy(model, bnb.nn.Linear8bitLt)
    with torch.no_grad():
        velocity = model.eval()(**flow_inputs(model)).velocity
        expected = reference(**flow_inputs(reference)).velocity
    assert velocity.shape == expected.shape and torch.isfinite(velocity).all()
    assert (velocity - expected).abs().max() < 0.1 * expected.abs().max()
    lora_backward(model)


def test_4bit_loading_runs_a_lora_backward(saved_tiny):
    # No inference pass first: on this CPU, bnb 0.50 repacks 4-bit weights on an eval no-grad forward, after which
    # training through a layer with a bias fails.
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = BagelModel.from_pretrained(saved_tiny, quantization_config=quantization)
    assert_policy(model, bnb.nn.Linear4bit)
    lora_backward(model)
