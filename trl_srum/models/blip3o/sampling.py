"""The official BLIP3o DiT sampler: deterministic Euler steps on a rectified flow, with classifier-free guidance.

Conventions (reference/blip3o.md §8.1): x_t = (1 - sigma) * latents + sigma * noise, so sampling runs sigma from 1
(pure noise) down to 0; the DiT reads time as sigma * 1000; the unconditional branch is an all-zero condition.
"""

from collections.abc import Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from .dit import Blip3oDiT


def flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The flow scheduler BLIP3o loads from Lumina-Next-SFT: diffusers' defaults (1000 train steps, shift 1)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def flow_sigmas(num_inference_steps: int) -> np.ndarray:
    """The official sampling sigmas: `linspace(1, 1/N, N)` in float32 (the scheduler appends the final 0)."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")
    return np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps).astype(np.float32)


@torch.no_grad()
def sample_latents(
    dit: Blip3oDiT,
    condition: torch.Tensor,
    noise: torch.Tensor,
    *,
    num_inference_steps: int = 30,
    guidance_scale: float = 3.0,
    callback_on_step_end: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate the flow from `noise` to latents.

    Args:
        dit ([`Blip3oDiT`]): the generator.
        condition (`torch.Tensor` of shape `(batch_size, num_queries, latent_embedding_size)`):
            The query states of each prompt.
        noise (`torch.Tensor` of shape `(batch_size, in_channels, rows, cols)`): the starting latents.
        num_inference_steps (`int`, *optional*, defaults to 30): number of Euler steps.
        guidance_scale (`float`, *optional*, defaults to 3.0): v = v_uncond + s * (v_cond - v_uncond).
        callback_on_step_end (`Callable`, *optional*): called as `callback(step_index, latents)` after every step.

    Returns:
        `torch.Tensor` of the shape of `noise`: the sampled latents.
    """
    scheduler = flow_scheduler()
    scheduler.set_timesteps(sigmas=flow_sigmas(num_inference_steps), device=noise.device)
    # one DiT call per step on [uncond; cond], as the official sampler batches it
    condition = torch.cat([torch.zeros_like(condition), condition])
    latents = noise
    for step_index, timestep in enumerate(scheduler.timesteps):
        # the official sampler hands the DiT the truncated integer time (833.33 -> 833), the update the exact sigmas
        dit_timestep = timestep.to(torch.int64).expand(condition.shape[0])
        velocity = dit(torch.cat([latents, latents]), dit_timestep, condition)
        velocity_uncond, velocity_cond = velocity.chunk(2)
        velocity = velocity_uncond + guidance_scale * (velocity_cond - velocity_uncond)
        latents = scheduler.step(velocity, timestep, latents).prev_sample
        if callback_on_step_end is not None:
            callback_on_step_end(step_index, latents)
    return latents
