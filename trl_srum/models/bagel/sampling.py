"""BAGEL's rectified-flow sampler: the timestep grid, classifier-free guidance and its renormalisation.

Conventions (as in the official code): `x_t = (1 - t) * latents + t * noise`, `t = 1` is pure noise, the network
predicts `velocity = noise - latents`, and the Euler update walks from `t = 1` down to `t = 0` with
`x <- x - (t_i - t_{i+1}) * velocity`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...flow import shift_timesteps


RENORM_TYPES = ("global", "channel", "text_channel")


@dataclass
class SamplerSettings:
    """Sampler settings, with the defaults of the official text-to-image recipe."""

    num_timesteps: int = field(default=50, metadata={"help": "Grid size N; the sampler runs N - 1 network passes."})
    timestep_shift: float = field(default=3.0, metadata={"help": "Shift s of the grid, t <- s t / (1 + (s - 1) t)."})
    cfg_text_scale: float = field(default=4.0, metadata={"help": "Text guidance scale; 1 turns guidance off."})
    cfg_img_scale: float = field(
        default=1.0,
        metadata={
            "help": "Image guidance scale, against the context without input images (or without the think "
            "text); only used while text guidance is on, as in the official code."
        },
    )
    cfg_interval: tuple[float, float] = field(
        default=(0.4, 1.0), metadata={"help": "Guidance is applied only for t in (low, high]."}
    )
    cfg_renorm_type: str = field(default="global", metadata={"help": f"One of {RENORM_TYPES}."})
    cfg_renorm_min: float = field(
        default=0.0, metadata={"help": "Lower clamp of the renorm factor ||v_cond|| / ||v_guided||; 1 disables it."}
    )

    def __post_init__(self) -> None:
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps={self.num_timesteps}: the grid needs at least 2 points (1 network pass).")
        if self.cfg_renorm_type not in RENORM_TYPES:
            raise ValueError(f"cfg_renorm_type={self.cfg_renorm_type!r} is not one of {RENORM_TYPES}.")
        low, high = self.cfg_interval
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"cfg_interval={self.cfg_interval} must satisfy 0 <= low <= high <= 1.")

    def guidance_active(self, t: float) -> bool:
        """Whether guidance applies at time `t` (the official code also requires a text scale above 1)."""
        low, high = self.cfg_interval
        return low < t <= high and self.cfg_text_scale > 1.0

    @property
    def uses_image_guidance(self) -> bool:
        return self.cfg_img_scale > 1.0


def timestep_grid(num_timesteps: int, shift: float) -> torch.Tensor:
    """The sampler's times, shape `(num_timesteps,)`, from 1 down to 0 (float32, as the official code)."""
    return shift_timesteps(torch.linspace(1, 0, num_timesteps), shift)


def _renorm(guided: torch.Tensor, reference: torch.Tensor, per_token: bool, renorm_min: float) -> torch.Tensor:
    """Scale `guided` down so that its norm does not exceed `reference`'s: per image or per token.

    Args:
        guided: shape `(batch, tokens, channels)`.
        reference: the conditional velocity, same shape.
    """
    dims = (-1,) if per_token else (-2, -1)
    reference_norm = torch.linalg.vector_norm(reference, dim=dims, keepdim=True)
    guided_norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
    scale = (reference_norm / (guided_norm + 1e-8)).clamp(min=renorm_min, max=1.0)
    return guided * scale


def guide_velocity(
    v_cond: torch.Tensor,
    v_uncond_text: torch.Tensor,
    v_uncond_image: torch.Tensor | None,
    settings: SamplerSettings,
) -> torch.Tensor:
    """Combine the branches of one step into the guided velocity.

    `v = v_u_txt + s_txt (v_c - v_u_txt)`, then `v = v_u_img + s_img (v - v_u_img)` when image guidance is on. The
    result is renormalised so that its norm never exceeds the conditional one: over each whole image ("global"), per
    token ("channel"), or per token on the text-guided velocity only, before image guidance ("text_channel").

    Args:
        v_cond: conditional velocity, shape `(batch, tokens, channels)`.
        v_uncond_text: velocity without the text condition, same shape.
        v_uncond_image: velocity without the image condition (only read when `settings.uses_image_guidance`).
        settings: the sampler settings.

    Returns:
        The guided velocity, shape `(batch, tokens, channels)`.
    """
    v_text = v_uncond_text + settings.cfg_text_scale * (v_cond - v_uncond_text)
    if settings.cfg_renorm_type == "text_channel":
        v_text = _renorm(v_text, v_cond, per_token=True, renorm_min=settings.cfg_renorm_min)
        if settings.uses_image_guidance:
            return v_uncond_image + settings.cfg_img_scale * (v_text - v_uncond_image)
        return v_text
    guided = v_text
    if settings.uses_image_guidance:
        guided = v_uncond_image + settings.cfg_img_scale * (v_text - v_uncond_image)
    return _renorm(guided, v_cond, per_token=settings.cfg_renorm_type == "channel", renorm_min=settings.cfg_renorm_min)
