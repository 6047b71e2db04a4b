"""Tiny random versions of the external models `trl-srum eval`'s protocols load (a VLM judge, zero-shot detectors,
CLIP), for tests and CPU benchmarks.

Each builder returns a `(model, processor)` pair, reproducible from `seed`; `save_tiny` writes one to a folder that
the protocols then load by path, exactly as they load a real checkpoint. Random weights: a tiny judge writes
gibberish, a tiny detector finds arbitrary boxes. They exercise the code paths, not the judgements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    SwinConfig,
)

from .blip3o.tiny import tiny_blip3o_config, tiny_processor


_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,-'"
# The text start token must not get id 0: OWL models take a query whose first id is 0 for padding.
_CLIP_VOCAB = {
    **{symbol: index for index, symbol in enumerate(_LETTERS)},
    **{f"{symbol}</w>": len(_LETTERS) + index for index, symbol in enumerate(_LETTERS)},
}
_CLIP_VOCAB.update({"<|startoftext|>": len(_CLIP_VOCAB), "<|endoftext|>": len(_CLIP_VOCAB) + 1})
_TEXT_TOWER = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}


def _clip_tokenizer(max_length: int) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (no merges), `max_length` tokens per text."""
    return CLIPTokenizer(vocab=dict(_CLIP_VOCAB), merges=[], model_max_length=max_length)


def _clip_text_config(max_length: int) -> dict[str, Any]:
    end = _CLIP_VOCAB["<|endoftext|>"]
    return {
        **_TEXT_TOWER,
        "vocab_size": len(_CLIP_VOCAB),
        "max_position_embeddings": max_length,
        "bos_token_id": _CLIP_VOCAB["<|startoftext|>"],
        "eos_token_id": end,
        "pad_token_id": end,
    }


def _vision_tower(image_size: int) -> dict[str, Any]:
    return {**_TEXT_TOWER, "image_size": image_size, "patch_size": 8}


def tiny_vlm_judge(seed: int = 0) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """A Qwen2.5-VL (hidden 64, 2 layers, a 1-block ViT; images of about 56x56 px) with a byte-level tokenizer: the
    backbone of `trl_srum.models.blip3o.tiny`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        processor = tiny_processor()
        model = Qwen2_5_VLForConditionalGeneration(tiny_blip3o_config(processor).backbone_config)
    return model.eval(), processor


def tiny_clip(seed: int = 0) -> tuple[CLIPModel, CLIPProcessor]:
    """CLIP with 1-layer, 32-wide towers on 32x32 px images."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = CLIPConfig(text_config=_clip_text_config(32), vision_config=_vision_tower(32), projection_dim=16)
        model = CLIPModel(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model.eval(), CLIPProcessor(image_processor=image_processor, tokenizer=_clip_tokenizer(32))


def tiny_owlv2(seed: int = 0) -> tuple[Owlv2ForObjectDetection, Owlv2Processor]:
    """OWLv2 with 1-layer, 32-wide towers on 32x32 px images (16 box predictions) and 16-token queries."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = Owlv2Config(text_config=_clip_text_config(16), vision_config=_vision_tower(32), projection_dim=32)
        model = Owlv2ForObjectDetection(config)
    image_processor = Owlv2ImageProcessor(size={"height": 32, "width": 32})
    return model.eval(), Owlv2Processor(image_processor=image_processor, tokenizer=_clip_tokenizer(16))


def tiny_grounding_dino(seed: int = 0) -> tuple[GroundingDinoForObjectDetection, GroundingDinoProcessor]:
    """Grounding DINO with a 4-stage Swin of width 8, a 1-layer BERT, width 32 and 10 queries, on 128 px images (its
    coarsest feature map must keep more than one pixel)."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_LETTERS]
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(words)})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = GroundingDinoConfig(
            backbone_config=SwinConfig(
                embed_dim=8,
                depths=[1, 1, 1, 1],
                num_heads=[1, 1, 1, 1],
                window_size=7,
                image_size=32,
                out_features=["stage2", "stage3", "stage4"],
                out_indices=[2, 3, 4],
            ),
            text_config=BertConfig(
                vocab_size=len(words),
                hidden_size=8,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=16,
                max_position_embeddings=64,
            ),
            use_timm_backbone=False,
            backbone=None,
            d_model=32,  # GroupNorm(32, d_model) needs a multiple of 32
            encoder_layers=1,
            decoder_layers=2,  # its box heads are tied from the second layer on
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            num_queries=10,
            encoder_n_points=2,
            decoder_n_points=2,
            max_text_len=64,
        )
        model = GroundingDinoForObjectDetection(config)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 128})
    return model.eval(), GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_tiny(folder: str | Path, model: Any, processor: Any) -> Path:
    """Write a tiny model and its processor to `folder`, loadable by id like any checkpoint; returns the folder."""
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
