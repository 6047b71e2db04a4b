"""BLIP3o's pixel decoder: EVA-CLIP feature tokens -> image, with an SDXL-style UNet, its VAE and Euler scheduler.

The checkpoint keeps it in `diffusion-decoder/` with the subfolders `unet/`, `vae/` and `scheduler/` (reference/
blip3o.md §8.2). The UNet cross-attends to the 64 feature tokens, reads their mean as SDXL's pooled `text_embeds`, and
takes SDXL's six size ids (original size, crop corner, target size). The decoder is frozen and has its own noise; it
is not part of [`Blip3oModel`]'s parameters, so training, saving of adapters and DDP never see it.
"""

import os
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers.utils import cached_file


DECODER_FOLDER = "diffusion-decoder"
DECODER_SUBFOLDERS = ("unet", "vae", "scheduler")


def has_pixel_decoder(pretrained_model_name_or_path: str, **hub_kwargs) -> bool:
    """Whether a checkpoint (local folder or Hub id) ships a `diffusion-decoder/` folder."""
    unet_config = cached_file(
        pretrained_model_name_or_path,
        f"{DECODER_FOLDER}/unet/config.json",
        _raise_exceptions_for_missing_entries=False,
        **hub_kwargs,
    )
    return unet_config is not None


class Blip3oPixelDecoder:
    """Decodes generated feature tokens to images.

    Args:
        unet ([`~diffusers.UNet2DConditionModel`]): SDXL-style UNet with `cross_attention_dim` = the feature width and
            `addition_embed_type="text_time"`.
        vae ([`~diffusers.AutoencoderKL`]): the image autoencoder.
        scheduler ([`~diffusers.EulerDiscreteScheduler`]): the noise schedule; each call works on a fresh copy.
    """

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler: EulerDiscreteScheduler):
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, *, dtype: torch.dtype | None = None, variant: str | None = None
    ) -> "Blip3oPixelDecoder":
        """Load the decoder from `<pretrained_model_name_or_path>/diffusion-decoder/`.

        Args:
            pretrained_model_name_or_path (`str`): the BLIP3o checkpoint (local folder or Hub id).
            dtype (`torch.dtype`, *optional*): dtype of the UNet and VAE; the stored one by default.
            variant (`str`, *optional*): weight-file variant; the Hub checkpoint stores `"bf16"`.

        Raises:
            FileNotFoundError: when a local checkpoint lacks the decoder folder or one of its subfolders.
        """
        folder = os.path.join(pretrained_model_name_or_path, DECODER_FOLDER)
        if os.path.isdir(pretrained_model_name_or_path):
            missing = [name for name in DECODER_SUBFOLDERS if not os.path.isdir(os.path.join(folder, name))]
            if missing:
                raise FileNotFoundError(
                    f"No BLIP3o pixel decoder in {pretrained_model_name_or_path!r}: expected the subfolders "
                    f"{', '.join(missing)} under {folder!r}."
                )
        subfolder = DECODER_FOLDER + "/{}"
        return cls(
            unet=UNet2DConditionModel.from_pretrained(
                pretrained_model_name_or_path, subfolder=subfolder.format("unet"), torch_dtype=dtype, variant=variant
            ),
            vae=AutoencoderKL.from_pretrained(
                pretrained_model_name_or_path, subfolder=subfolder.format("vae"), torch_dtype=dtype, variant=variant
            ),
            scheduler=EulerDiscreteScheduler.from_pretrained(
                pretrained_model_name_or_path, subfolder=subfolder.format("scheduler")
            ),
        )

    def save_pretrained(self, save_directory: str) -> None:
        """Write the decoder to `<save_directory>/diffusion-decoder/`, the layout `from_pretrained` reads."""
        folder = os.path.join(save_directory, DECODER_FOLDER)
        self.unet.save_pretrained(os.path.join(folder, "unet"))
        self.vae.save_pretrained(os.path.join(folder, "vae"))
        self.scheduler.save_pretrained(os.path.join(folder, "scheduler"))

    def to(self, device: torch.device | str) -> "Blip3oPixelDecoder":
        """Move the UNet and the VAE to `device` (their dtype is chosen when loading)."""
        self.unet.to(device)
        self.vae.to(device)
        return self

    @property
    def pixels_per_latent(self) -> int:
        """Image pixels per VAE latent cell along each side; image sides must be multiples of it."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def check_image_size(self, image_size: tuple[int, int]) -> None:
        """Raise `ValueError` (naming the size) unless both sides are positive multiples of `pixels_per_latent`."""
        factor = self.pixels_per_latent
        if any(side <= 0 or side % factor for side in image_size):
            raise ValueError(
                f"The pixel decoder cannot draw an image of size {tuple(image_size)} (width, height): both sides "
                f"must be positive multiples of {factor}."
            )

    @torch.no_grad()
    def __call__(
        self,
        tokens: torch.Tensor,
        *,
        negative_tokens: torch.Tensor,
        generators: Sequence[torch.Generator],
        image_size: tuple[int, int],
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
    ) -> list[Image.Image]:
        """Draw one image per token set.

        Args:
            tokens (`torch.Tensor` of shape `(batch_size, num_tokens, feature_dim)`): generated features, row-major.
            negative_tokens (`torch.Tensor` of shape `(1, num_tokens, feature_dim)`): condition of the guidance's
                negative branch, shared by the batch.
            generators (`Sequence[torch.Generator]`): image `i` draws its starting noise from `generators[i]` only.
            image_size (`tuple[int, int]`): `(width, height)` of the images.
            num_inference_steps (`int`, *optional*, defaults to 50): number of Euler steps.
            guidance_scale (`float`, *optional*, defaults to 3.0): classifier-free guidance scale.

        Returns:
            `list[PIL.Image.Image]`: the RGB images.
        """
        self.check_image_size(image_size)
        if len(generators) != tokens.shape[0]:
            raise ValueError(f"Got {len(generators)} generators for {tokens.shape[0]} token sets; pass one per image.")
        width, height = image_size
        batch_size = tokens.shape[0]
        device, dtype = self.unet.device, self.unet.dtype
        scheduler = EulerDiscreteScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=device)

        factor = self.pixels_per_latent
        latent_shape = (batch_size, self.unet.config.in_channels, height // factor, width // factor)
        latents = randn_tensor(latent_shape, generator=list(generators), device=device, dtype=torch.float32)
        latents = (latents * scheduler.init_noise_sigma).to(dtype)

        # the official pipeline batches [conditional; negative]
        encoder_hidden_states = torch.cat([tokens, negative_tokens.expand_as(tokens)]).to(device, dtype)
        added_cond_kwargs = {
            "text_embeds": encoder_hidden_states.mean(dim=1),
            "time_ids": torch.tensor([height, width, 0, 0, height, width], device=device, dtype=dtype).expand(
                2 * batch_size, -1
            ),
        }
        for timestep in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), timestep)
            noise_pred = self.unet(
                model_input, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
            ).sample
            noise_cond, noise_negative = noise_pred.chunk(2)
            noise_pred = noise_negative + guidance_scale * (noise_cond - noise_negative)
            latents = scheduler.step(noise_pred, timestep, latents).prev_sample

        pixels = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        pixels = (pixels / 2 + 0.5).clamp(0, 1)  # (B, 3, H, W) in [0, 1]
        pixels = (pixels.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
        return [Image.fromarray(image) for image in pixels]
