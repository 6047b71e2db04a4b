"""The rectified-flow path shared by every model SRUM trains: time shift, training-time sampling, noising.

Convention: ``x_t = (1 - t) * x_0 + t * noise``, so ``t = 1`` is pure noise and ``t = 0`` is data, and the velocity
the network learns is ``noise - x_0``.
"""

from typing import Literal

import torch


TimestepSampling = Literal["logit_normal", "uniform"]
TIMESTEP_SAMPLINGS: tuple[str, ...] = ("logit_normal", "uniform")


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The SD3/FLUX rational shift ``s * t / (1 + (s - 1) * t)``: ``shift > 1`` spends more time at high noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_timesteps(
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    sampling: TimestepSampling = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    t_min: float = 0.0,
    t_max: float = 1.0,
) -> torch.Tensor:
    """Draw one training time per image.

    ``"logit_normal"`` is ``sigmoid(N(logit_mean, logit_std))``, as BAGEL trains; ``"uniform"`` is U(0, 1). The shift
    is applied next (BAGEL trains with shift 1, i.e. none), and the result is finally mapped affinely into
    ``[t_min, t_max]`` so that training can be restricted to, e.g., the high-noise steps that decide the layout.

    Returns:
        A float32 tensor of shape (num_samples,).
    """
    if sampling == "logit_normal":
        t = torch.sigmoid(logit_mean + logit_std * torch.randn(num_samples, generator=generator))
    elif sampling == "uniform":
        t = torch.rand(num_samples, generator=generator)
    else:
        raise ValueError(f"unknown timestep sampling {sampling!r}; expected one of {TIMESTEP_SAMPLINGS}")
    t = shift_timesteps(t, shift)
    return t_min + (t_max - t_min) * t


def add_noise(latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) * latents + t * noise``; ``t`` broadcasts from the left (one value per token or a scalar)."""
    t = t.to(latents.dtype).reshape(t.shape + (1,) * (latents.ndim - t.ndim))
    return (1.0 - t) * latents + t * noise
