"""Tiny random BAGELs and a small word-level tokenizer, for tests and CPU smoke runs (nothing is downloaded).

Example:

```python
>>> from trl_srum.models.bagel.tiny import tiny_bagel_model
>>> model = tiny_bagel_model(seed=0)  # random weights, with a tokenizer; images of 4..32 px per side
>>> model.generate_images(["a red circle"], generators=[torch.Generator().manual_seed(0)], image_size=(16, 16),
...                       num_timesteps=3)
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .configuration_bagel import BagelConfig
from .conversion import SPECIAL_TOKENS, special_token_ids_from_tokenizer
from .modeling_bagel import BagelModel


# Enough words for shape-world prompts, the concise judge prompts and answers (tests check that every word of
# `trl_srum.judge.prompts.concise_vocabulary` is here), think tags and grounding boxes.
TINY_WORDS = (
    "a an the one two three four five of and or with in on at to is are there this that it image picture photo "
    "red green blue yellow black white orange purple gray pink brown "
    "circle square triangle rectangle star cube ball box shape shapes object objects background "
    "left right top bottom above below next beside near center middle big small large tiny "
    "yes no score region global layout reason answer question how many what where which color count "
    "locate every instance per x1 y1 x2 y2 think plan draw show should first then "
    "find size phrase none match relevant prompt"
).split()
_SYMBOLS = ("▁", *"0123456789", *"[](){},.:;!?<>/-+=*'\"")


def build_word_level_tokenizer(words: Sequence[str] = TINY_WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer that decodes exactly what it encodes (for known words).

    Words split on spaces (SentencePiece's "▁" marks a leading space) and every digit and punctuation mark is its own
    token, so numbers and boxes like "[120, 40, 300, 200]" or "0.75" round-trip. Each word is known lower-case and
    capitalised, with and without a leading space; anything else becomes `<unk>`. The vocabulary starts with
    `<unk>`, `<|endoftext|>` (padding) and BAGEL's four special tokens.
    """
    spellings = dict.fromkeys(variant for word in words for variant in (word.lower(), word.capitalize()))
    pieces = [
        "<unk>",
        "<|endoftext|>",
        *SPECIAL_TOKENS.values(),
        *_SYMBOLS,
        *(f"▁{word}" for word in spellings),
        *spellings,
    ]
    tokenizer = Tokenizer(models.WordLevel({piece: index for index, piece in enumerate(pieces)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
            pre_tokenizers.Split(Regex(r"\d|[^\w▁]"), behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS.values()),
    )


def tiny_bagel_config(tokenizer: PreTrainedTokenizerBase | None = None, **overrides: Any) -> BagelConfig:
    """A BAGEL config of about 150k parameters whose special token ids are the tokenizer's.

    LLM: 2 layers, hidden 32, 4 heads / 2 KV heads. ViT: 1 layer of width 16, 14 px patches, up to 4x4 patches.
    VAE: two levels of 8 channels, 4 latent channels, downsample 2; a latent token covers 4x4 px and the latent grid
    is at most 8x8 tokens, so generated images are 4 to 32 px per side in steps of 4.

    Args:
        tokenizer: defaults to `build_word_level_tokenizer()`.
        overrides: `BagelConfig` fields to change (e.g. `visual_und=False`).
    """
    tokenizer = tokenizer or build_word_level_tokenizer()
    settings: dict[str, Any] = {
        "llm_config": {
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        "vit_config": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 56,
            "patch_size": 14,
            "vision_use_head": False,
        },
        "vae_config": {
            "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2,
            "block_out_channels": [8, 8],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 4,
            "scaling_factor": 0.3611,
            "shift_factor": 0.1159,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        },
        "max_latent_size": 8,
        "vit_max_num_patch_per_side": 4,
        "vae_min_image_size": 16,
        "vit_min_image_size": 28,
        **special_token_ids_from_tokenizer(tokenizer),
    }
    settings.update(overrides)
    return BagelConfig(**settings)


def tiny_bagel_model(
    seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None, **config_overrides: Any
) -> BagelModel:
    """A tiny random `BagelModel` (float32, eval mode) with its tokenizer set; the same seed gives the same weights."""
    tokenizer = tokenizer or build_word_level_tokenizer()
    config = tiny_bagel_config(tokenizer, **config_overrides)
    with torch.random.fork_rng():  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        model = BagelModel(config).eval()
    model.tokenizer = tokenizer
    return model
