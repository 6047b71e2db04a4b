"""The SRUM objective: reward-weighted flow matching plus a constraint that stops reward hacking.

Flow convention (BAGEL's): ``x_t = (1 - t) * x_0 + t * noise`` and the network predicts ``noise - x_0``.

All tensors are per latent token, so a packed batch (several images of different sizes concatenated along the token
axis) is handled as one sequence: every mean is over tokens (and channels), which weights an image by its number of
tokens, exactly as the official code does on its packed batches.
"""

from typing import Literal

import torch


ConstraintType = Literal["self", "reference"]
CONSTRAINT_TYPES: tuple[str, ...] = ("self", "reference")


def srum_loss(
    v_pred: torch.Tensor,
    noise: torch.Tensor,
    latents: torch.Tensor,
    token_rewards: torch.Tensor,
    *,
    lambda_constraint: float = 0.5,
    latents_anchor: torch.Tensor | None = None,
    v_ref: torch.Tensor | None = None,
    constraint: ConstraintType = "self",
    repulsion_margin: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Compute the SRUM loss of one (packed) batch.

    ``loss = loss_reward + lambda_constraint * loss_constraint`` where, with ``se_i`` the squared error of token i
    averaged over channels and ``r_i`` its reward:

    - ``loss_reward = mean_i(max(r_i, 0) * se_i + max(-r_i, 0) * relu(repulsion_margin - se_i))``. For the official
      reward maps (``r >= 0``) this is the released ``mean(R * (v - (noise - latents))**2)``. A negative reward pushes
      the prediction away from that token's target, but only until its error reaches ``repulsion_margin``: the term
      is bounded, so training cannot diverge.
    - ``constraint="self"``: ``loss_constraint = mean((v - (noise - latents_anchor))**2)``, the released anchor term
      (``latents_anchor`` defaults to ``latents``; the official code re-encodes the same image for it).
    - ``constraint="reference"``: ``loss_constraint = mean((v - v_ref)**2)``, a KL-style pull toward a frozen
      reference model's velocity (under PEFT: the same model with its adapter disabled).

    Args:
        v_pred: predicted velocities, shape (N, D).
        noise: the noise that built ``x_t``, shape (N, D).
        latents: the clean latents that were noised, shape (N, D).
        token_rewards: reward of each token, shape (N,).
        lambda_constraint: weight of the constraint term.
        latents_anchor: clean latents of the constraint target, shape (N, D); ``constraint="self"`` only.
        v_ref: the reference model's velocities, shape (N, D); required for ``constraint="reference"``.
        constraint: ``"self"`` or ``"reference"``.
        repulsion_margin: squared error at which the repulsion of a negative-reward token stops.

    Returns:
        The scalar loss and a dict of floats: ``loss``, ``loss_reward``, ``loss_constraint``, ``repelled_fraction``.
    """
    if constraint not in CONSTRAINT_TYPES:
        raise ValueError(f"unknown constraint {constraint!r}; expected one of {CONSTRAINT_TYPES}")
    if v_pred.ndim != 2 or noise.shape != v_pred.shape or latents.shape != v_pred.shape:
        raise ValueError(
            f"v_pred, noise and latents must all be (N, D); got {tuple(v_pred.shape)}, {tuple(noise.shape)}, "
            f"{tuple(latents.shape)}"
        )
    if token_rewards.shape != v_pred.shape[:1]:
        raise ValueError(f"token_rewards must be ({v_pred.shape[0]},); got {tuple(token_rewards.shape)}")

    # Losses are accumulated in float32 even when the model runs in bf16: the reward weights are small numbers.
    v_pred = v_pred.float()
    noise = noise.float()
    rewards = token_rewards.to(device=v_pred.device, dtype=torch.float32)

    squared_error = (v_pred - (noise - latents.float())).pow(2).mean(dim=-1)
    attraction = rewards.clamp_min(0.0) * squared_error
    repulsion = (-rewards).clamp_min(0.0) * torch.relu(repulsion_margin - squared_error)
    loss_reward = (attraction + repulsion).mean()

    if constraint == "self":
        anchor = latents if latents_anchor is None else latents_anchor
        if anchor.shape != v_pred.shape:
            raise ValueError(f"latents_anchor must be {tuple(v_pred.shape)}; got {tuple(anchor.shape)}")
        loss_constraint = (v_pred - (noise - anchor.float())).pow(2).mean()
    else:
        if v_ref is None:
            raise ValueError('constraint="reference" needs v_ref, the frozen reference velocities')
        if v_ref.shape != v_pred.shape:
            raise ValueError(f"v_ref must be {tuple(v_pred.shape)}; got {tuple(v_ref.shape)}")
        loss_constraint = (v_pred - v_ref.detach().float()).pow(2).mean()

    loss = loss_reward + lambda_constraint * loss_constraint
    # One device sync for every float the caller gets back, the reward check included.
    rewards_finite, *values = torch.stack(
        [torch.isfinite(rewards).all().float(), loss, loss_reward, loss_constraint, (rewards < 0).float().mean()]
    ).tolist()
    if not rewards_finite:
        raise ValueError("token_rewards contains NaN or inf")
    metrics = dict(zip(("loss", "loss_reward", "loss_constraint", "repelled_fraction"), values, strict=True))
    return loss, metrics
