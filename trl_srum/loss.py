"""The training objectives: SRUM's reward-weighted flow matching, and a negative-aware, group-centred variant.

Flow convention (BAGEL's): ``x_t = (1 - t) * x_0 + t * noise`` and the network predicts ``noise - x_0``.

All tensors are per latent token, so a packed batch (several images of different sizes concatenated along the token
axis) is handled as one sequence: every mean is over tokens (and channels), which weights an image by its number of
tokens, exactly as the official code does on its packed batches.
"""

import torch


def _check_token_tensors(v_pred: torch.Tensor, noise: torch.Tensor, latents: torch.Tensor, **per_token) -> None:
    if v_pred.ndim != 2 or noise.shape != v_pred.shape or latents.shape != v_pred.shape:
        raise ValueError(
            f"v_pred, noise and latents must all be (N, D); got {tuple(v_pred.shape)}, {tuple(noise.shape)}, "
            f"{tuple(latents.shape)}"
        )
    for name, tensor in per_token.items():
        if tensor is not None and tensor.shape != v_pred.shape[:1]:
            raise ValueError(f"{name} must be ({v_pred.shape[0]},); got {tuple(tensor.shape)}")


def _reference_term(v_pred: torch.Tensor, v_ref: torch.Tensor | None, weight: float) -> torch.Tensor:
    """``mean((v - v_ref)**2)``, a KL-style pull toward a frozen reference model; 0 when its weight is 0."""
    if weight == 0:
        return v_pred.new_zeros(())
    if v_ref is None:
        raise ValueError("reference_weight > 0 needs v_ref, the frozen reference velocities")
    if v_ref.shape != v_pred.shape:
        raise ValueError(f"v_ref must be {tuple(v_pred.shape)}; got {tuple(v_ref.shape)}")
    return (v_pred - v_ref.detach().float()).pow(2).mean()


def _finite_metrics(names: tuple[str, ...], values: list[torch.Tensor], per_token: torch.Tensor, what: str):
    # One device sync for every float the caller gets back, the check of the per-token input included.
    finite, *floats = torch.stack([torch.isfinite(per_token).all().float(), *values]).tolist()
    if not finite:
        raise ValueError(f"{what} contains NaN or inf")
    return dict(zip(names, floats, strict=True))


def srum_loss(
    v_pred: torch.Tensor,
    noise: torch.Tensor,
    latents: torch.Tensor,
    token_rewards: torch.Tensor,
    *,
    anchor_weight: float = 0.5,
    latents_anchor: torch.Tensor | None = None,
    reference_weight: float = 0.0,
    v_ref: torch.Tensor | None = None,
    repulsion_margin: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Compute the SRUM loss of one (packed) batch.

    ``loss = loss_reward + anchor_weight * loss_anchor + reference_weight * loss_reference`` where, with ``se_i`` the
    squared error of token i averaged over channels and ``r_i`` its reward:

    - ``loss_reward = mean_i(max(r_i, 0) * se_i + max(-r_i, 0) * relu(repulsion_margin - se_i))``. For the official
      reward maps (``r >= 0``) this is the released ``mean(R * (v - (noise - latents))**2)``. A negative reward pushes
      the prediction away from that token's target, but only until its error reaches ``repulsion_margin``: the term
      is bounded, so training cannot diverge.
    - ``loss_anchor = mean((v - (noise - latents_anchor))**2)``: the released constraint (λ_c = ``anchor_weight``, 0.5
      as released), plain flow matching toward the same generated image (``latents_anchor`` defaults to ``latents``;
      the official code re-encodes the image for it).
    - ``loss_reference = mean((v - v_ref)**2)``: a KL-style pull toward a frozen reference model's velocity (under PEFT
      the same model with its adapter disabled); only computed when ``reference_weight > 0``.

    Args:
        v_pred: predicted velocities, shape (N, D).
        noise: the noise that built ``x_t``, shape (N, D).
        latents: the clean latents that were noised, shape (N, D).
        token_rewards: reward of each token, shape (N,).
        anchor_weight: weight of the anchor term.
        latents_anchor: clean latents of the anchor target, shape (N, D).
        reference_weight: weight of the reference term.
        v_ref: the reference model's velocities, shape (N, D); required when ``reference_weight > 0``.
        repulsion_margin: squared error at which the repulsion of a negative-reward token stops.

    Returns:
        The scalar loss and a dict of floats: ``loss``, ``loss_reward``, ``loss_anchor``, ``loss_reference``,
        ``repelled_fraction``.
    """
    _check_token_tensors(v_pred, noise, latents, token_rewards=token_rewards)
    anchor = latents if latents_anchor is None else latents_anchor
    if anchor.shape != v_pred.shape:
        raise ValueError(f"latents_anchor must be {tuple(v_pred.shape)}; got {tuple(anchor.shape)}")

    # Losses are accumulated in float32 even when the model runs in bf16: the reward weights are small numbers.
    v_pred = v_pred.float()
    noise = noise.float()
    rewards = token_rewards.to(device=v_pred.device, dtype=torch.float32)

    squared_error = (v_pred - (noise - latents.float())).pow(2).mean(dim=-1)
    attraction = rewards.clamp_min(0.0) * squared_error
    repulsion = (-rewards).clamp_min(0.0) * torch.relu(repulsion_margin - squared_error)
    loss_reward = (attraction + repulsion).mean()
    loss_anchor = (v_pred - (noise - anchor.float())).pow(2).mean()
    loss_reference = _reference_term(v_pred, v_ref, reference_weight)

    loss = loss_reward + anchor_weight * loss_anchor + reference_weight * loss_reference
    metrics = _finite_metrics(
        ("loss", "loss_reward", "loss_anchor", "loss_reference", "repelled_fraction"),
        [loss, loss_reward, loss_anchor, loss_reference, (rewards < 0).float().mean()],
        rewards,
        "token_rewards",
    )
    return loss, metrics


def nft_loss(
    v_pred: torch.Tensor,
    v_old: torch.Tensor,
    noise: torch.Tensor,
    latents: torch.Tensor,
    token_weights: torch.Tensor,
    *,
    beta: float = 1.0,
    reference_weight: float = 0.0,
    v_ref: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The negative-aware flow loss of DiffusionNFT (arXiv 2509.16117), per token.

    With ``u = noise - latents`` the flow target, ``v_old`` the model at the start of the round on the same ``x_t``,
    and ``w_i`` in [0, 1] the weight of token i (½ + A_i / 2c for a clipped, group-centred advantage A_i):

    ``v⁺ = β v + (1 - β) v_old``, ``v⁻ = (1 + β) v_old - β v`` and
    ``loss = mean_i [w_i ‖v⁺_i - u_i‖² + (1 - w_i) ‖v⁻_i - u_i‖²] / β + reference_weight * loss_reference``,

    with ``‖·‖²`` the mean over channels. At ``v = v_old`` the gradient of a token is ``2(2w - 1)(v_old - u)/D``:
    toward the target for ``w > ½`` (a better-than-its-group token), away from it for ``w < ½``, and zero at
    ``w = ½``, so a prompt whose candidates all score alike teaches nothing and the part the samples share (what an
    imitation loss would learn, drift included) is not learned. Both terms are convex parabolas in ``v``, so the loss
    has a finite minimum for any weights: a negative advantage pushes ``v`` away only so far, never to divergence.

    Args:
        v_pred: predicted velocities of the trained model, shape (N, D).
        v_old: velocities of the model at the start of the round (no gradient), shape (N, D).
        noise, latents: as in `srum_loss`, shape (N, D).
        token_weights: w in [0, 1] per token, shape (N,).
        beta: how far the implied positive/negative policies lie from the old one (1 as in the paper).
        reference_weight / v_ref: the optional pull toward a frozen reference model, as in `srum_loss`.

    Returns:
        The scalar loss and a dict of floats: ``loss``, ``loss_positive``, ``loss_negative``, ``loss_reference``,
        ``token_weight_mean``.
    """
    _check_token_tensors(v_pred, noise, latents, token_weights=token_weights)
    if v_old.shape != v_pred.shape:
        raise ValueError(f"v_old must be {tuple(v_pred.shape)}; got {tuple(v_old.shape)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    weights = token_weights.to(device=v_pred.device, dtype=torch.float32)
    if bool(((weights < 0) | (weights > 1)).any()):
        raise ValueError("token_weights must lie in [0, 1]")

    v_pred = v_pred.float()
    v_old = v_old.detach().float()
    target = noise.float() - latents.float()
    positive = beta * v_pred + (1.0 - beta) * v_old
    negative = (1.0 + beta) * v_old - beta * v_pred
    loss_positive = (weights * (positive - target).pow(2).mean(dim=-1)).mean() / beta
    loss_negative = ((1.0 - weights) * (negative - target).pow(2).mean(dim=-1)).mean() / beta
    loss_reference = _reference_term(v_pred, v_ref, reference_weight)

    loss = loss_positive + loss_negative + reference_weight * loss_reference
    metrics = _finite_metrics(
        ("loss", "loss_positive", "loss_negative", "loss_reference", "token_weight_mean"),
        [loss, loss_positive, loss_negative, loss_reference, weights.mean()],
        weights,
        "token_weights",
    )
    return loss, metrics
