import re

import torch
from peft import LoraConfig, get_peft_model

from trl_srum.models.bagel import GENERATION_LORA_TARGET_MODULES
from trl_srum.models.bagel.tiny import tiny_bagel_model


def test_generation_lora_preset_only_touches_the_generation_expert():
    model = tiny_bagel_model(seed=7).train()
    targets = model.generation_lora_target_modules
    assert targets == GENERATION_LORA_TARGET_MODULES
    matched = [name for name, _ in model.named_modules() if re.fullmatch(targets, name)]
    assert len(matched) == 7 * model.config.llm_config.num_hidden_layers
    assert all("_moe_gen" in name for name in matched)

    with torch.no_grad():
        ids = model.wrap_text(model.tokenize(["is there a red circle ?"])[0])
        before = model.forward_text(model.new_cache(1), [ids], output_logits=True).logits[0]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    adapted = {name for name, parameter in peft_model.named_parameters() if parameter.requires_grad}
    assert adapted and all("lora_" in name and "_moe_gen" in name for name in adapted)

    generator = torch.Generator().manual_seed(0)
    noisy = [torch.randn(4, model.config.latent_dim, generator=generator)]
    inputs = peft_model.prepare_flow_inputs(["a red circle"], noisy, [(2, 2)], torch.tensor([0.5]))
    peft_model(**inputs).velocity.pow(2).mean().backward()
    for name, parameter in peft_model.named_parameters():
        if name in adapted:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0).step()
    with torch.no_grad():
        after = model.forward_text(model.new_cache(1), [ids], output_logits=True).logits[0]
    assert torch.equal(after, before)  # adapters on the generation expert never change text
