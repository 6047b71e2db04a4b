"""BLIP3o (arXiv 2505.09568) as a single `PreTrainedModel` that SRUM can drive through `trl_srum.protocol`.

The network is three parts (reference/blip3o.md §0):

1. `backbone`: a Qwen2.5-VL, frozen. It answers questions (the judge) and turns a prompt into the condition: the
   prompt is followed by an "[IMG]" token and `num_queries` learnable query embeddings, and the backbone's last hidden
   states at the query positions are the condition.
2. `latent_queries`: those query embeddings.
3. `dit`: a flow-matching DiT that draws an 8x8 grid of 1792-d EVA-CLIP features from the condition.

A separate frozen pixel decoder (`decoder.py`) turns the features into an image. `forward` is the flow forward SRUM
trains; everything else is inference.
"""

import os
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.models.transformers.lumina_nextdit2d import LuminaNextDiTBlock
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import nn
from transformers import (
    AutoProcessor,
    BitsAndBytesConfig,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers import initialization as init
from transformers.utils import cached_file

from ...protocol import Box, FlowOutput, GeneratedImage
from . import understanding
from .configuration_blip3o import Blip3oConfig, Blip3oDiTConfig
from .conversion import (
    OFFICIAL_DECODER_VARIANT,
    load_official_state_dict,
    official_config_to_blip3o,
    official_state_dict_to_blip3o,
    read_official_config,
)
from .decoder import Blip3oPixelDecoder, has_pixel_decoder
from .dit import Blip3oDiT
from .sampling import sample_latents


# the DiT's attention and SwiGLU linears; the adaLN, embedding and output linears stay frozen under LoRA
GENERATION_LORA_TARGET_MODULES = (
    r"dit\.layers\.\d+\.(attn1\.to_[qkv]|attn2\.to_([qkv]|out\.0)|feed_forward\.linear_[123])"
)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`(batch_size, rows * cols, channels)` row-major tokens -> `(batch_size, channels, rows, cols)`."""
    return tokens.transpose(1, 2).unflatten(2, grid)


def grid_to_tokens(latents: torch.Tensor) -> torch.Tensor:
    """`(batch_size, channels, rows, cols)` -> `(batch_size, rows * cols, channels)` row-major tokens."""
    return latents.flatten(2).transpose(1, 2)


class Blip3oPreTrainedModel(PreTrainedModel):
    """Loading, saving and initialisation shared by the BLIP3o models."""

    config: Blip3oConfig
    base_model_prefix = ""
    main_input_name = "noisy_latents"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "LuminaNextDiTBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, Blip3oModel):
            init.normal_(module.latent_queries, std=1.0)  # the official queries start as randn
        elif isinstance(module, LuminaNextDiTBlock):
            init.zeros_(module.gate)  # cross-attention starts switched off, as in Lumina-Next


class Blip3oModel(Blip3oPreTrainedModel):
    """BLIP3o: frozen Qwen2.5-VL + learnable queries + flow DiT; implements [`~trl_srum.protocol.UnifiedModel`].

    Beside the parameters, the model holds two optional inference companions that are not modules: `processor`
    (a [`~transformers.Qwen2_5_VLProcessor`], needed for any text input) and `decoder` (a [`Blip3oPixelDecoder`],
    needed to draw pixels). `from_pretrained` loads both when the checkpoint has them and `save_pretrained` writes them.
    """

    def __init__(self, config: Blip3oConfig):
        super().__init__(config)
        self.backbone = Qwen2_5_VLForConditionalGeneration(config.backbone_config)
        self.latent_queries = nn.Parameter(
            torch.empty(1, config.num_queries, config.backbone_config.text_config.hidden_size)
        )
        self.dit = Blip3oDiT(config.dit_config)
        # the backbone is the judge: it never trains, so SRUM cannot teach it to like its own images
        self.backbone.requires_grad_(False)
        self.processor: Qwen2_5_VLProcessor | None = None
        self.decoder: Blip3oPixelDecoder | None = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str,
        *,
        dit_config: Blip3oDiTConfig | dict | None = None,
        load_decoder: bool | None = None,
        decoder_dtype: torch.dtype | None = None,
        decoder_variant: str | None = None,
        **kwargs: Any,
    ) -> "Blip3oModel":
        """Load a checkpoint in our layout or in the official BLIP3o layout (detected from `config.json`).

        Args:
            pretrained_model_name_or_path (`str`): local folder or Hub id.
            dit_config ([`Blip3oDiTConfig`] or `dict`, *optional*):
                Only for official checkpoints, which store no DiT config: the DiT to build (defaults to the real one).
            load_decoder (`bool`, *optional*):
                Whether to load `diffusion-decoder/`: `None` loads it when present, `True` requires it.
            decoder_dtype (`torch.dtype`, *optional*): dtype of the decoder (the stored one by default).
            decoder_variant (`str`, *optional*):
                Weight variant of the decoder files; by default `"bf16"` for official checkpoints (the Hub stores the
                decoder as `*.bf16.safetensors`) and none for ours.
            kwargs: passed to [`~transformers.PreTrainedModel.from_pretrained`], e.g. `dtype`, `device_map` or a
                `quantization_config`. A [`~transformers.BitsAndBytesConfig`] quantizes the backbone only: the DiT
                and the backbone's `lm_head` are added to its `llm_int8_skip_modules`.
        """
        hub_kwargs = {key: kwargs[key] for key in ("revision", "token", "cache_dir") if key in kwargs}
        official_config = read_official_config(pretrained_model_name_or_path, **hub_kwargs)
        if official_config is not None:
            state_dict = load_official_state_dict(pretrained_model_name_or_path, **hub_kwargs)
            model = cls.from_official_state_dict(state_dict, official_config, dit_config=dit_config, **kwargs)
        elif dit_config is not None:
            raise ValueError(
                f"dit_config is only for official checkpoints, but {pretrained_model_name_or_path!r} has its own "
                "Blip3oConfig; change its dit_config there instead."
            )
        else:
            kwargs["quantization_config"] = _backbone_only(kwargs.get("quantization_config"))
            model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
            # loading recreates the parameters, with requires_grad on
            model.backbone.requires_grad_(False)

        if _has_processor(pretrained_model_name_or_path, **hub_kwargs):
            model.processor = AutoProcessor.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if load_decoder or (load_decoder is None and has_pixel_decoder(pretrained_model_name_or_path, **hub_kwargs)):
            if decoder_variant is None and official_config is not None:
                decoder_variant = OFFICIAL_DECODER_VARIANT
            model.load_decoder(pretrained_model_name_or_path, dtype=decoder_dtype, variant=decoder_variant)
        return model

    @classmethod
    def from_official_state_dict(
        cls,
        state_dict: dict[str, torch.Tensor],
        official_config: dict[str, Any],
        *,
        dit_config: Blip3oDiTConfig | dict | None = None,
        **kwargs: Any,
    ) -> "Blip3oModel":
        """Build the model from an official checkpoint already in memory (keys and `config.json` as published).

        `kwargs` go to [`~transformers.PreTrainedModel.from_pretrained`], as in [`~Blip3oModel.from_pretrained`].
        """
        config = official_config_to_blip3o(official_config, dit_config)
        state_dict = official_state_dict_to_blip3o(state_dict, config)
        kwargs["quantization_config"] = _backbone_only(kwargs.get("quantization_config"))
        model = super().from_pretrained(None, config=config, state_dict=state_dict, **kwargs)
        # loading recreates the parameters, with requires_grad on
        model.backbone.requires_grad_(False)
        return model

    def load_decoder(
        self, pretrained_model_name_or_path: str, *, dtype: torch.dtype | None = None, variant: str | None = None
    ) -> None:
        """Attach the pixel decoder stored in `<pretrained_model_name_or_path>/diffusion-decoder/`."""
        self.decoder = Blip3oPixelDecoder.from_pretrained(pretrained_model_name_or_path, dtype=dtype, variant=variant)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the model and, when attached, its processor and pixel decoder (under `diffusion-decoder/`)."""
        super().save_pretrained(save_directory, **kwargs)
        if self.processor is not None:
            self.processor.save_pretrained(save_directory)
        if self.decoder is not None:
            self.decoder.save_pretrained(save_directory)

    # ------------------------------------------------------------------ training (protocol)
    def generation_parameter_names(self) -> list[str]:
        """The DiT's parameters and `latent_queries`: everything the official generation training updates.

        Training `latent_queries` back-propagates through the frozen backbone (its activations are then kept); a
        trainer that freezes them gets a condition computed under `no_grad`.
        """
        return ["latent_queries"] + [f"dit.{name}" for name, _ in self.dit.named_parameters()]

    @property
    def generation_lora_target_modules(self) -> str:
        """A PEFT regex over the DiT's attention and SwiGLU linears; no backbone module matches it."""
        return GENERATION_LORA_TARGET_MODULES

    def prepare_flow_inputs(
        self,
        prompts: Sequence[str | None],
        noisy_latents: Sequence[torch.Tensor],
        grids: Sequence[tuple[int, int]],
        timesteps: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Pack a batch for `forward`; see [`~trl_srum.protocol.UnifiedModel.prepare_flow_inputs`].

        Latents are `(64, 1792)` EVA-CLIP feature tokens on an (8, 8) grid, `timesteps` the SRUM flow time in [0, 1],
        and a `None` prompt gets BLIP3o's dropped condition, all zeros.
        """
        tokenized = iter(self.tokenize_generation_prompts([prompt for prompt in prompts if prompt is not None]))
        prompt_ids = [None if prompt is None else next(tokenized) for prompt in prompts]
        return self.prepare_flow_inputs_from_ids(prompt_ids, noisy_latents, grids, timesteps)

    def prepare_flow_inputs_from_ids(
        self,
        prompt_ids: Sequence[torch.Tensor | None],
        noisy_latents: Sequence[torch.Tensor],
        grids: Sequence[tuple[int, int]],
        timesteps: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """`prepare_flow_inputs` for prompts that are already token ids (the templated prompt, without "[IMG]")."""
        if not len(prompt_ids) == len(noisy_latents) == len(grids) == timesteps.shape[0] or timesteps.ndim != 1:
            raise ValueError(
                f"Got {len(prompt_ids)} prompts, {len(noisy_latents)} latents, {len(grids)} grids and timesteps of "
                f"shape {tuple(timesteps.shape)}; pass one of each per sample."
            )
        if ((timesteps < 0) | (timesteps > 1)).any():
            raise ValueError(f"Flow timesteps must lie in [0, 1], got {timesteps.tolist()}.")
        grid = self.latent_grid()
        expected_shape = (grid[0] * grid[1], self.config.dit_config.in_channels)
        for index, (latents, sample_grid) in enumerate(zip(noisy_latents, grids)):
            if tuple(sample_grid) != grid or tuple(latents.shape) != expected_shape:
                raise ValueError(
                    f"Sample {index} has latents of shape {tuple(latents.shape)} on grid {tuple(sample_grid)}; BLIP3o "
                    f"latents are {expected_shape} tokens on the {grid} grid."
                )

        dit_dtype = self.dit.patch_embedder.proj.weight.dtype
        conditioned = torch.tensor([ids is not None for ids in prompt_ids])
        input_ids, attention_mask = self._pad_prompts([ids for ids in prompt_ids if ids is not None])
        return {
            "prompt_input_ids": input_ids.to(self.device),
            "prompt_attention_mask": attention_mask.to(self.device),
            "conditioned": conditioned.to(self.device),
            "noisy_latents": tokens_to_grid(torch.stack(list(noisy_latents)), grid).to(self.device, dit_dtype),
            # the DiT was trained on time sigma * 1000 (its scheduler's timesteps), with sigma the SRUM t
            "timesteps": (timesteps * 1000).to(self.device, torch.float32),
        }

    def forward(
        self,
        prompt_input_ids: torch.Tensor,
        prompt_attention_mask: torch.Tensor,
        conditioned: torch.Tensor,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> FlowOutput:
        """The flow-matching forward.

        Args:
            prompt_input_ids (`torch.Tensor` of shape `(num_conditioned, length)`):
                Templated prompts followed by "[IMG]", right-padded, for the samples that keep their condition.
            prompt_attention_mask (`torch.Tensor` of shape `(num_conditioned, length)`): 1 on real tokens.
            conditioned (`torch.Tensor` of shape `(batch_size,)`, bool): `False` gives a sample the zero condition.
            noisy_latents (`torch.Tensor` of shape `(batch_size, in_channels, rows, cols)`): x_t.
            timesteps (`torch.Tensor` of shape `(batch_size,)`): flow time on the DiT's 0-1000 scale.

        Returns:
            [`~trl_srum.protocol.FlowOutput`] with the velocity of every latent token, shape
            `(batch_size * rows * cols, in_channels)`, in sample order.
        """
        hidden_size = self.config.backbone_config.text_config.hidden_size
        condition = noisy_latents.new_zeros(noisy_latents.shape[0], self.config.num_queries, hidden_size)
        if prompt_input_ids.shape[0] > 0:
            query_states = self._query_states(prompt_input_ids, prompt_attention_mask)
            condition = condition.index_put((conditioned,), query_states.to(condition.dtype))
        velocity = self.dit(noisy_latents, timesteps, condition)
        return FlowOutput(velocity=grid_to_tokens(velocity).flatten(0, 1))

    # ------------------------------------------------------------------ the condition
    def tokenize_generation_prompts(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """Token ids of each caption wrapped as the official generation request in the chat template."""
        processor = self._require_processor()
        texts = [
            understanding.chat_prompt(
                processor, self.config.generation_instruction.format(caption=prompt), with_image=False
            )
            for prompt in prompts
        ]
        return [torch.tensor(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]

    def encode_prompts(self, prompt_ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """The condition of each prompt: `(len(prompt_ids), num_queries, hidden_size)` query states."""
        input_ids, attention_mask = self._pad_prompts(prompt_ids)
        return self._query_states(input_ids.to(self.device), attention_mask.to(self.device))

    def _pad_prompts(self, prompt_ids: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Append "[IMG]" to each prompt and right-pad them; padding on the right keeps each prompt at positions
        0..L-1, the positions the official code uses."""
        sequences = [torch.cat([ids.cpu(), torch.tensor([self.config.image_start_token_id])]) for ids in prompt_ids]
        length = max((len(ids) for ids in sequences), default=0)
        input_ids = torch.zeros(len(sequences), length, dtype=torch.long)
        attention_mask = torch.zeros(len(sequences), length, dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    def _query_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's last hidden states (after its final norm) at the queries placed right after each prompt."""
        batch_size, num_queries = input_ids.shape[0], self.config.num_queries
        # gradients reach the frozen backbone's activations only when the queries themselves train
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.latent_queries.requires_grad):
            token_embeds = self.get_input_embeddings()(input_ids)
            hidden_size = token_embeds.shape[-1]
            lengths = attention_mask.sum(dim=1)
            query_positions = lengths[:, None] + torch.arange(num_queries, device=input_ids.device)  # (B, Q)
            # the queries overwrite the padding after each prompt (and extend the sequence by num_queries)
            inputs_embeds = torch.cat([token_embeds, token_embeds.new_zeros(batch_size, num_queries, hidden_size)], 1)
            inputs_embeds = inputs_embeds.scatter(
                1,
                query_positions[..., None].expand(-1, -1, hidden_size),
                self.latent_queries.to(token_embeds.dtype).expand(batch_size, -1, -1),
            )
            positions = torch.arange(inputs_embeds.shape[1], device=input_ids.device)
            # plain 1D positions, the same on the three M-RoPE axes: the official code calls the text decoder
            # directly and never computes Qwen2.5-VL's 3D positions
            hidden_states = self.backbone.model.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=(positions < (lengths + num_queries)[:, None]).long(),
                position_ids=positions.expand(batch_size, -1),
                use_cache=False,
            ).last_hidden_state
            return hidden_states.gather(1, query_positions[..., None].expand(-1, -1, hidden_size))

    # ------------------------------------------------------------------ generation (protocol)
    def latent_grid(self, image_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """The DiT's grid, (8, 8) for every image size: the decoder, not the DiT, sets the image size.

        Raises `ValueError` (naming the size) when an attached decoder cannot draw `image_size` = (width, height).
        """
        if image_size is not None and self.decoder is not None:
            self.decoder.check_image_size(image_size)
        side = self.config.dit_config.input_size
        return side, side

    @torch.no_grad()
    def generate_latents(
        self,
        prompts: Sequence[str],
        *,
        generators: Sequence[torch.Generator],
        num_inference_steps: int = 30,
        guidance_scale: float = 3.0,
    ) -> torch.Tensor:
        """Sample `(len(prompts), in_channels, rows, cols)` feature grids; prompt `i` draws its noise from
        `generators[i]` only."""
        if len(generators) != len(prompts):
            raise ValueError(f"Got {len(generators)} generators for {len(prompts)} prompts; pass one per prompt.")
        condition = self.encode_prompts(self.tokenize_generation_prompts(prompts))
        dit_dtype = self.dit.patch_embedder.proj.weight.dtype
        shape = (len(prompts), self.config.dit_config.in_channels, *self.latent_grid())
        # drawn in float32, so that the noise does not depend on the model's dtype
        noise = randn_tensor(shape, generator=list(generators), device=self.device, dtype=torch.float32)
        return sample_latents(
            self.dit,
            condition.to(dit_dtype),
            noise.to(dit_dtype),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )

    @torch.no_grad()
    def generate_images(
        self,
        prompts: Sequence[str],
        *,
        generators: Sequence[torch.Generator],
        image_size: tuple[int, int] = (1024, 1024),
        think: bool = False,
        num_inference_steps: int = 30,
        guidance_scale: float = 3.0,
        decoder_num_inference_steps: int = 50,
        decoder_guidance_scale: float = 3.0,
    ) -> list[GeneratedImage]:
        """Draw one image per prompt: DiT features (official sampler), then the pixel decoder.

        Prompt `i` takes the DiT's noise and then the decoder's noise from `generators[i]`. The defaults are the
        official ones (30 DiT steps at guidance 3, 50 decoder steps at guidance 3, 1024x1024).
        """
        if think:
            raise ValueError("BLIP3o has no think mode; call generate_images with think=False.")
        decoder = self._require_decoder()
        self.latent_grid(image_size)
        latents = self.generate_latents(
            prompts, generators=generators, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale
        )
        tokens = grid_to_tokens(latents)
        negative_tokens = self._decoder_negative_tokens(num_inference_steps, guidance_scale)
        images = decoder(
            tokens,
            negative_tokens=negative_tokens,
            generators=generators,
            image_size=image_size,
            num_inference_steps=decoder_num_inference_steps,
            guidance_scale=decoder_guidance_scale,
        )
        return [
            GeneratedImage(image=image, latents=sample_tokens.float().cpu(), grid=self.latent_grid())
            for image, sample_tokens in zip(images, tokens)
        ]

    def encode_images(
        self, images: Sequence[Image.Image], *, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """Not available: BLIP3o's latents are EVA-CLIP ViT-E features, and that 4.4B encoder is not part of the
        checkpoint (the official code downloads it separately). SRUM does not need it: it trains on the model's own
        generated latents (`GeneratedImage.latents`), which are already in this space."""
        raise NotImplementedError(
            "BLIP3o cannot encode images: its latent space is EVA-CLIP ViT-E features and the encoder is not part of "
            "the checkpoint. Train on the generated latents (GeneratedImage.latents) instead."
        )

    @torch.no_grad()
    def decode_latents(
        self,
        latents: Sequence[torch.Tensor],
        grids: Sequence[tuple[int, int]],
        *,
        generators: Sequence[torch.Generator] | None = None,
        image_size: tuple[int, int] = (1024, 1024),
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
    ) -> list[Image.Image]:
        """Draw images from feature tokens with the (stochastic) pixel decoder.

        Without `generators`, every image draws its decoder noise from a generator seeded with 0, so a given latent
        always decodes to the same image, wherever it sits in the batch.
        """
        decoder = self._require_decoder()
        grid = self.latent_grid(image_size)
        if len(latents) != len(grids):
            raise ValueError(f"Got {len(latents)} latents for {len(grids)} grids; pass one grid per latent.")
        for index, (sample, sample_grid) in enumerate(zip(latents, grids)):
            if tuple(sample_grid) != grid or sample.shape != (grid[0] * grid[1], self.config.dit_config.in_channels):
                raise ValueError(
                    f"Sample {index} has latents of shape {tuple(sample.shape)} on grid {tuple(sample_grid)}; BLIP3o "
                    f"decodes ({grid[0] * grid[1]}, {self.config.dit_config.in_channels}) tokens on the {grid} grid."
                )
        if generators is None:
            generators = [torch.Generator().manual_seed(0) for _ in latents]
        return decoder(
            torch.stack(list(latents)).to(self.device),
            negative_tokens=self._decoder_negative_tokens(),
            generators=generators,
            image_size=image_size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )

    def _decoder_negative_tokens(self, num_inference_steps: int = 30, guidance_scale: float = 3.0) -> torch.Tensor:
        """The decoder's negative condition: the model's own features for a blank caption, as in the official
        pipeline. They are drawn from a fixed seed (the official pipeline caches one random draw), and redrawn on
        every call so that they follow the DiT as it trains."""
        generator = torch.Generator(self.device).manual_seed(self.config.decoder_negative_seed)
        latents = self.generate_latents(
            [self.config.decoder_negative_caption],
            generators=[generator],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )
        return grid_to_tokens(latents)

    # ------------------------------------------------------------------ understanding (protocol)
    def answer_questions(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        *,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 1.0,
        generators: Sequence[torch.Generator] | None = None,
        think: bool = False,
    ) -> list[str]:
        """Answer `questions[i]` about `images[i]` with the Qwen2.5-VL backbone (greedy unless `do_sample`)."""
        if think:
            raise ValueError("BLIP3o has no think mode; call answer_questions with think=False.")
        return understanding.answer_questions(
            self.backbone,
            self._require_processor(),
            images,
            questions,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            generators=generators,
        )

    def score_answers(self, image: Image.Image, questions: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """`(len(questions), len(answers))` log-probabilities; the image prefix is encoded once."""
        return understanding.score_answers(self.backbone, self._require_processor(), image, questions, answers)

    @property
    def supports_grounding(self) -> bool:
        """Qwen2.5-VL grounds natively, with JSON `bbox_2d` answers."""
        return True

    def ground(self, image: Image.Image, phrases: Sequence[str], *, max_new_tokens: int = 512) -> list[list[Box]]:
        """Boxes of every instance of each phrase, in `image`'s pixels; out-of-image boxes are clipped to it."""
        return understanding.ground(
            self.backbone, self._require_processor(), image, phrases, max_new_tokens=max_new_tokens
        )

    # ------------------------------------------------------------------ companions
    def _require_processor(self) -> Qwen2_5_VLProcessor:
        if self.processor is None:
            raise RuntimeError(
                "This BLIP3o model has no processor. Set one, e.g. `model.processor = "
                "AutoProcessor.from_pretrained('Qwen/Qwen2.5-VL-7B-Instruct')` (the official code uses that one for "
                "BLIP3o-8B; the 3B-Instruct one for BLIP3o-4B)."
            )
        return self.processor

    def _require_decoder(self) -> Blip3oPixelDecoder:
        if self.decoder is None:
            raise RuntimeError(
                "This BLIP3o model has no pixel decoder. Load one with `model.load_decoder(path)`, where `path` holds "
                "diffusion-decoder/{unet,vae,scheduler} (the BLIP3o Hub checkpoints do)."
            )
        return self.decoder.to(self.device)


def _backbone_only(quantization_config: Any) -> Any:
    """A bitsandbytes config that leaves the DiT and the backbone's `lm_head` unquantized.

    bitsandbytes would otherwise quantize every linear layer; the DiT trains (LoRA or full) and `lm_head` produces the
    judge's logits, which transformers also keeps in full precision for causal language models.
    """
    if not isinstance(quantization_config, BitsAndBytesConfig):
        return quantization_config
    quantization_config = BitsAndBytesConfig.from_dict(quantization_config.to_dict())
    skip_modules = list(quantization_config.llm_int8_skip_modules or [])
    quantization_config.llm_int8_skip_modules = skip_modules + [
        name for name in ("dit", "backbone.lm_head") if name not in skip_modules
    ]
    return quantization_config


def _has_processor(pretrained_model_name_or_path: str, **hub_kwargs: Any) -> bool:
    """Whether the checkpoint ships a processor (transformers >= 5 writes `processor_config.json`, older versions a
    `preprocessor_config.json`)."""
    return any(
        cached_file(pretrained_model_name_or_path, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        for name in ("processor_config.json", "preprocessor_config.json")
    )
