"""A tiny random BLIP3o, complete with tokenizer, processor and pixel decoder, for tests and CPU smoke runs.

Example:

```python
>>> import torch
>>> from trl_srum.models.blip3o.tiny import tiny_blip3o
>>> model = tiny_blip3o()
>>> images = model.generate_images(
...     ["a red cube"], generators=[torch.Generator().manual_seed(0)], image_size=(32, 32),
...     num_inference_steps=2, decoder_num_inference_steps=2,
... )
>>> images[0].latents.shape
torch.Size([64, 32])

```
"""

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from .configuration_blip3o import Blip3oConfig, Blip3oDiTConfig
from .decoder import Blip3oPixelDecoder
from .modeling_blip3o import Blip3oModel


# Qwen2.5-VL's special tokens, plus BLIP3o's image-start token
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "[IMG]",
)
# renders the Qwen2.5-VL chat layout: a default system turn, then each turn with images as vision placeholders
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# every image is resized to about 56x56 pixels: 4x4 patches of 14, merged into 4 tokens
TINY_IMAGE_PIXELS = 56 * 56
TINY_FEATURE_DIM = 32


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges: one token per byte (so any text round-trips) plus the specials."""
    byte_alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={symbol: index for index, symbol in enumerate(byte_alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def tiny_processor() -> Qwen2_5_VLProcessor:
    """A Qwen2.5-VL processor around `tiny_tokenizer`, with tiny images and a Qwen-layout chat template."""
    pixels = {"min_pixels": TINY_IMAGE_PIXELS, "max_pixels": TINY_IMAGE_PIXELS}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tiny_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=CHAT_TEMPLATE,
    )


def tiny_blip3o_config(processor: Qwen2_5_VLProcessor) -> Blip3oConfig:
    """Backbone: hidden 64, 2 layers, a 1-block ViT; DiT: width 32, 2 layers, 32-d features on the 8x8 grid."""
    tokenizer = processor.tokenizer
    token_id = tokenizer.convert_tokens_to_ids
    backbone_config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "bos_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        # widths of at least 64, the 4-bit block size: bitsandbytes' CPU inference path cannot repack narrower layers
        vision_config={
            "depth": 1,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [0],
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    dit_config = Blip3oDiTConfig(
        in_channels=TINY_FEATURE_DIM, dim=32, n_layers=2, n_heads=4, n_kv_heads=4, multiple_of=32
    )
    return Blip3oConfig(backbone_config=backbone_config, dit_config=dit_config, image_start_token_id=token_id("[IMG]"))


def tiny_pixel_decoder() -> Blip3oPixelDecoder:
    """An SDXL-shaped decoder for `TINY_FEATURE_DIM`-wide tokens, with a 2x VAE (image sides: multiples of 2)."""
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        cross_attention_dim=TINY_FEATURE_DIM,
        attention_head_dim=(2, 4),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        # pooled tokens plus the six size ids, each embedded in addition_time_embed_dim channels
        projection_class_embeddings_input_dim=TINY_FEATURE_DIM + 6 * 8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    return Blip3oPixelDecoder(unet=unet, vae=vae, scheduler=scheduler)


def tiny_blip3o(seed: int = 0, *, with_decoder: bool = True) -> Blip3oModel:
    """A tiny random [`Blip3oModel`] with `processor` (and `decoder`) attached, reproducible from `seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        processor = tiny_processor()
        model = Blip3oModel(tiny_blip3o_config(processor))
        # the gates start at zero, which would switch cross-attention off; random gates let the tests see the
        # condition's tokens and not only its pooled summary
        for layer in model.dit.layers:
            torch.nn.init.normal_(layer.gate)
        model.processor = processor
        if with_decoder:
            model.decoder = tiny_pixel_decoder()
    return model.eval()
