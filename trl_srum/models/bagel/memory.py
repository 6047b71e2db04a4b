"""How much memory SRUM's generation training of BAGEL needs, by precision, trainable set and resolution.

Run `python -m trl_srum.models.bagel.memory` for the table of the 7B config. The estimate is for one image per step
with per-layer activation checkpointing, a memory-efficient attention kernel, and the model loaded for generation
training only (`visual_und=False`, `use_lm_head=False`). Parameter counts come from the model itself, built on the
meta device.

Bytes per parameter:

- bf16 weights 2; LLM.int8 weights 1 (+ an fp32 scale per output row); NF4 weights 0.5 + an fp32 absmax per block of
  64 (no double quantization). Embeddings, norms, biases and the generation adapters stay bf16 and the VAE fp32
  (`BagelModel._keep_in_fp32_modules`).
- Full fine-tuning (bf16 base only): bf16 gradient 2 + fp32 master 4 + AdamW moments 8 = 14 on top of the weight.
- LoRA: fp32 adapter 4 + gradient 4 + AdamW moments 8 = 16 per adapter parameter.

Activations: the per-layer checkpoints (`layers x tokens x hidden` in bf16) plus one layer's recompute (its inputs,
q/k/v/o, the MLP intermediates, in bf16), plus for quantized bases one dequantized weight of the largest linear.
CUDA context and allocator fragmentation (about 1 to 1.5 GB) are not included.

Checked on an H100 (`recipes/benchmarks/bench_memory.py`, docs/bagel.md): weights within 1%, bf16 and 4-bit
training peaks within 7%. 8-bit training is under-estimated (measured 1.14x at 512 px, 1.59x at 1024 px), likely
because the int8 matmul of bitsandbytes keeps tensors for its backward that activation checkpointing does not free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .configuration_bagel import BagelConfig
from .modeling_bagel import GENERATION_LORA_TARGET_MODULES, BagelModel


GB = 1e9
PRECISIONS = ("bf16", "8-bit", "4-bit")
LORA_RANKS = (16, 32, 64)
RESOLUTIONS = (512, 1024)
PROMPT_TOKENS = 128  # a prompt with a think plan; noise in the estimate next to the image tokens


@dataclass
class ParameterCensus:
    quantizable: int  # nn.Linear weights a bitsandbytes config quantizes (everything but lm_head, adapters, VAE)
    quantizable_rows: int  # output rows of those linears (LLM.int8 keeps one fp32 scale per row)
    unquantized: int  # embeddings, norms, biases, adapters (bf16)
    vae: int  # fp32
    generation: int  # trainable in full generation training (`generation_parameter_names`)
    lora_per_rank: int  # LoRA parameters per unit of rank on `GENERATION_LORA_TARGET_MODULES`
    largest_linear: int  # elements of the largest quantized weight (dequantized transiently in backward)


def parameter_census(config: BagelConfig) -> ParameterCensus:
    """Count the parameters of a model with `config` by how they are stored and trained."""
    with torch.device("meta"):
        model = BagelModel(config)
    keep = tuple(f"{name}." for name in BagelModel._keep_in_fp32_modules)
    quantizable = quantizable_rows = largest = lora_per_rank = 0
    lora_pattern = re.compile(GENERATION_LORA_TARGET_MODULES)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is model.language_model.lm_head:
            continue
        if lora_pattern.fullmatch(name):
            lora_per_rank += module.in_features + module.out_features
        if name.startswith(keep):
            continue
        quantizable += module.weight.numel()
        quantizable_rows += module.out_features
        largest = max(largest, module.weight.numel())
    vae = sum(parameter.numel() for parameter in model.vae.parameters())
    total = sum(parameter.numel() for parameter in model.parameters())
    generation_names = set(model.generation_parameter_names())
    generation = sum(parameter.numel() for name, parameter in model.named_parameters() if name in generation_names)
    return ParameterCensus(
        quantizable=quantizable,
        quantizable_rows=quantizable_rows,
        unquantized=total - quantizable - vae,
        vae=vae,
        generation=generation,
        lora_per_rank=lora_per_rank,
        largest_linear=largest,
    )


@dataclass
class MemoryEstimate:
    weights: float  # GB
    trainable: int  # parameters
    optimizer: float  # GB: gradients, master weights and AdamW moments of the trainable parameters
    activations: float  # GB

    @property
    def total(self) -> float:
        return self.weights + self.optimizer + self.activations


def weight_bytes(census: ParameterCensus, precision: str) -> float:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}.")
    quantized = {
        "bf16": 2.0 * census.quantizable,
        "8-bit": 1.0 * census.quantizable + 4.0 * census.quantizable_rows,
        "4-bit": (0.5 + 4.0 / 64) * census.quantizable,
    }[precision]
    return quantized + 2.0 * census.unquantized + 4.0 * census.vae


def training_memory(
    config: BagelConfig, precision: str, lora_rank: int | None, resolution: int, census: ParameterCensus | None = None
) -> MemoryEstimate | None:
    """Memory of one generation training step on `resolution`-pixel square images; None when not possible.

    Args:
        config: the full model's config (the estimate drops the ViT and `lm_head` itself).
        precision: how the base weights are stored, one of `PRECISIONS`.
        lora_rank: LoRA rank on the generation expert, or None to fine-tune all generation parameters (bf16 only).
        resolution: image side in pixels.
        census: the parameter census of the training config, when already computed.
    """
    if lora_rank is None and precision != "bf16":
        return None  # quantized weights cannot be fine-tuned directly
    census = census or parameter_census(generation_training_config(config))
    llm = config.llm_config
    tokens = PROMPT_TOKENS + (resolution // config.latent_stride) ** 2 + 2
    checkpoints = llm.num_hidden_layers * tokens * llm.hidden_size * 2
    head_dim = llm.hidden_size // llm.num_attention_heads
    attention_width = (2 * llm.num_attention_heads + 2 * llm.num_key_value_heads) * head_dim
    recompute = tokens * (4 * llm.hidden_size + attention_width + 3 * llm.intermediate_size) * 2
    dequantized = 0 if precision == "bf16" else census.largest_linear * 2
    if lora_rank is None:
        trainable, optimizer = census.generation, 14.0 * census.generation
    else:
        trainable = census.lora_per_rank * lora_rank
        optimizer = 16.0 * trainable
    return MemoryEstimate(
        weights=weight_bytes(census, precision) / GB,
        trainable=trainable,
        optimizer=optimizer / GB,
        activations=(checkpoints + recompute + dequantized) / GB,
    )


def generation_training_config(config: BagelConfig) -> BagelConfig:
    """The config SRUM loads for generation training: no ViT, connector or text head."""
    return BagelConfig(**{**config.to_dict(), "visual_und": False, "use_lm_head": False})


def format_table(config: BagelConfig) -> str:
    full, training = parameter_census(config), parameter_census(generation_training_config(config))
    lines = [
        "BAGEL memory estimate (GB = 1e9 bytes), one image per step, activation checkpointing per layer, "
        "ViT and lm_head not loaded",
        f"parameters: full model {(full.quantizable + full.unquantized) / 1e9:.3f} B + VAE {full.vae / 1e6:.1f} M; "
        f"generation training subset {(training.quantizable + training.unquantized) / 1e9:.3f} B; "
        f"trainable in full generation training {training.generation / 1e9:.3f} B; "
        f"LoRA {training.lora_per_rank / 1e6:.4f} M per rank",
        "whole model, weights only: "
        + ", ".join(f"{precision} {weight_bytes(full, precision) / GB:.1f}" for precision in PRECISIONS),
        "",
        "| precision | trainable | resolution | weights | grads + optimizer | activations | total |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for precision in PRECISIONS:
        for lora_rank in (None, *LORA_RANKS):
            method = "full (gen expert + adapters)" if lora_rank is None else f"LoRA r={lora_rank}"
            for resolution in RESOLUTIONS:
                estimate = training_memory(config, precision, lora_rank, resolution, training)
                if estimate is None:
                    lines.append(
                        f"| {precision} | {method} | {resolution} | n/a: quantized weights are frozen | | | |"
                    )
                    continue
                lines.append(
                    f"| {precision} | {method} ({estimate.trainable / 1e6:,.0f} M) | {resolution} | "
                    f"{estimate.weights:.1f} | {estimate.optimizer:.1f} | {estimate.activations:.2f} | "
                    f"{estimate.total:.1f} |"
                )
    lines.append(
        "\n8-bit rows are low: on an H100 the 8-bit base's training peak was 1.14x this estimate at 512 px and 1.59x "
        "at 1024 px (likely bitsandbytes' int8 matmul keeping tensors that activation checkpointing does not free)."
    )
    return "\n".join(lines)


def main() -> None:
    print(format_table(BagelConfig()))


if __name__ == "__main__":
    main()
