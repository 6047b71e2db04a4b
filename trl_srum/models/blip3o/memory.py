"""Training-memory calculator for BLIP3o-4B and -8B under SRUM: `python -m trl_srum.models.blip3o.memory`.

Parameter counts come from building the real module tree on the meta device (no weights, no download), so they are
exact for the configurations below; the Qwen2.5-VL sizes are the published ones (reference/blip3o.md §2).

Assumptions of the estimate, per device:

- backbone frozen: bf16 is 2 bytes per parameter; bitsandbytes 8-bit stores a linear weight in 1 byte plus one fp32
  scale per output row; 4-bit NF4 (transformers' default, no double quantization) in half a byte plus one fp32 absmax
  per 64 weights. Embeddings, norms, biases and `lm_head` stay bf16 (see `Blip3oModel.from_pretrained`).
- DiT "full": the DiT trains in mixed precision, i.e. fp32 weights, fp32 gradients and two fp32 AdamW moments, 16
  bytes per parameter. `latent_queries` stay frozen; training them as well adds the backbone's activations.
- DiT "LoRA r": the DiT is frozen in bf16, and the adapters on `generation_lora_target_modules` train at 16 bytes per
  parameter.
- activations: the DiT's saved tensors for one sample (64 image tokens, 64 condition tokens), in bf16, with activation
  checkpointing off (every block's tensors) or on (block inputs plus one block). The backbone runs under `no_grad` and
  only needs one layer's transient memory. CUDA context, allocator fragmentation and the pixel decoder (about 5.3 GB in
  bf16, needed for rollouts only) are not included.
"""

import argparse
import re
from dataclasses import dataclass

import torch
from transformers import Qwen2_5_VLConfig

from .configuration_blip3o import Blip3oConfig
from .modeling_blip3o import GENERATION_LORA_TARGET_MODULES, Blip3oModel


GIB = 1024**3
_QWEN_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16}
# the backbones' published sizes; BLIP3o resized both vocabularies to 151668 rows (reference/blip3o.md §2)
BACKBONES = {
    "BLIP3o-8B": Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 151668,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
        },
        vision_config={**_QWEN_VISION, "out_hidden_size": 3584},
        tie_word_embeddings=False,
    ),
    "BLIP3o-4B": Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 151668,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
        },
        vision_config={**_QWEN_VISION, "out_hidden_size": 2048},
        tie_word_embeddings=True,
    ),
}
# bytes per weight and per extra fp32 statistic of a quantized linear layer
_QUANTIZED_LINEAR_BYTES = {
    "bf16": lambda layer: 2 * layer.weight.numel(),
    "8-bit": lambda layer: layer.weight.numel() + 4 * layer.out_features,
    "4-bit": lambda layer: layer.weight.numel() / 2 + 4 * layer.weight.numel() / 64,
}


@dataclass
class MemoryEstimate:
    """Memory of one training setup, in GiB (trainable parameters as a count)."""

    model: str
    backbone_precision: str
    dit_training: str
    weights: float
    trainable_parameters: int
    gradients_and_optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients_and_optimizer + self.activations


def build_on_meta(name: str) -> Blip3oModel:
    """The full-size BLIP3o module tree without any storage."""
    with torch.device("meta"):
        return Blip3oModel(Blip3oConfig(backbone_config=BACKBONES[name]))


def backbone_bytes(model: Blip3oModel, precision: str) -> float:
    """Bytes of the frozen backbone when its linear layers (all but `lm_head`) are stored at `precision`."""
    total = 0.0
    for module_name, module in model.backbone.named_modules():
        for parameter_name, parameter in module.named_parameters(recurse=False):
            is_linear_weight = type(module) is torch.nn.Linear and parameter_name == "weight"
            if is_linear_weight and module_name != "lm_head":
                total += _QUANTIZED_LINEAR_BYTES[precision](module)
            else:
                total += 2 * parameter.numel()
    return total


def lora_parameters(model: Blip3oModel, rank: int) -> int:
    """Number of LoRA parameters (A and B) at `rank` on `generation_lora_target_modules`."""
    return sum(
        rank * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if re.fullmatch(GENERATION_LORA_TARGET_MODULES, name)
    )


def dit_activation_bytes(model: Blip3oModel, *, checkpointing: bool) -> float:
    """Saved activations of the DiT for one training sample, in bf16.

    Per block and token: about 20 `dim`-wide tensors (norms, q/k/v before and after qk-norm and RoPE, both attention
    outputs, projections, residuals) and 5 SwiGLU-wide ones; per condition token, 3 `dim`-wide ones (normed context,
    cross-attention keys and values).
    """
    config = model.config.dit_config
    ffn_dim = model.dit.layers[0].feed_forward.linear_1.out_features
    image_tokens, condition_tokens = config.input_size**2, model.config.num_queries
    per_block = 2 * (image_tokens * (20 * config.dim + 5 * ffn_dim) + condition_tokens * 3 * config.dim)
    if checkpointing:
        return config.n_layers * 2 * image_tokens * config.dim + per_block
    return config.n_layers * per_block


def estimate(
    name: str,
    backbone_precision: str,
    lora_rank: int | None,
    *,
    batch_size: int = 1,
    checkpointing: bool = True,
    model: Blip3oModel | None = None,
) -> MemoryEstimate:
    """Memory of SRUM training of `name` ("BLIP3o-8B" or "BLIP3o-4B").

    Args:
        backbone_precision (`str`): "bf16", "8-bit" or "4-bit".
        lora_rank (`int`, *optional*): LoRA rank on the DiT; `None` trains the whole DiT.
        batch_size (`int`, *optional*, defaults to 1): samples per device and micro-step.
        checkpointing (`bool`, *optional*, defaults to `True`): activation checkpointing of the DiT blocks.
        model ([`Blip3oModel`], *optional*): the meta-device model of `name`, to reuse across calls.
    """
    if backbone_precision not in _QUANTIZED_LINEAR_BYTES:
        raise ValueError(
            f"backbone_precision must be one of {list(_QUANTIZED_LINEAR_BYTES)}, got {backbone_precision!r}."
        )
    model = model if model is not None else build_on_meta(name)
    dit_parameters = sum(parameter.numel() for parameter in model.dit.parameters())
    frozen_extra = 2 * model.latent_queries.numel()
    if lora_rank is None:
        trainable, dit_bytes, dit_training = dit_parameters, 4 * dit_parameters, "full"
    else:
        trainable = lora_parameters(model, lora_rank)
        dit_bytes, dit_training = 2 * dit_parameters + 4 * trainable, f"LoRA r={lora_rank}"
    return MemoryEstimate(
        model=name,
        backbone_precision=backbone_precision,
        dit_training=dit_training,
        weights=(backbone_bytes(model, backbone_precision) + dit_bytes + frozen_extra) / GIB,
        trainable_parameters=trainable,
        gradients_and_optimizer=12 * trainable / GIB,  # fp32 gradient + two fp32 AdamW moments
        activations=batch_size * dit_activation_bytes(model, checkpointing=checkpointing) / GIB,
    )


def memory_table(
    *, lora_ranks: tuple[int, ...] = (16, 64), batch_size: int = 16, checkpointing: bool = True
) -> list[MemoryEstimate]:
    """Every model x backbone precision x (DiT full, DiT LoRA at each rank)."""
    rows = []
    for name in BACKBONES:
        model = build_on_meta(name)
        for precision in _QUANTIZED_LINEAR_BYTES:
            for rank in (None, *lora_ranks):
                rows.append(
                    estimate(name, precision, rank, batch_size=batch_size, checkpointing=checkpointing, model=model)
                )
    return rows


def format_table(rows: list[MemoryEstimate]) -> str:
    """A Markdown table of `rows`."""
    lines = [
        "| model | backbone | DiT training | trainable params | weights GiB | grads + AdamW GiB | activations GiB "
        "| total GiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.model} | {row.backbone_precision} | {row.dit_training} | {row.trainable_parameters / 1e6:,.1f}M "
            f"| {row.weights:.1f} | {row.gradients_and_optimizer:.1f} | {row.activations:.2f} | {row.total:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="SRUM training memory of BLIP3o-4B and -8B, per device.")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per device and micro-step")
    parser.add_argument("--lora-ranks", type=int, nargs="+", default=[16, 64], help="LoRA ranks to list")
    parser.add_argument(
        "--no-checkpointing", action="store_true", help="keep every DiT block's activations (no recomputation)"
    )
    args = parser.parse_args()
    rows = memory_table(
        lora_ranks=tuple(args.lora_ranks), batch_size=args.batch_size, checkpointing=not args.no_checkpointing
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
