"""The training forward of the shapes-world BAGEL over fixed-shape rows, equal to `BagelModel`'s packed paths.

- a generation row is ``[<im_start> caption <im_end> (padded)] [<vision_start> <vision_end>] [latent tokens]``;
- an understanding row is ``[<vision_start> ViT tokens <vision_end>] [question 1 + answer] [question 2 + answer] ...``
  where every question continues the image alone, at the position right after it, as `score_answers` and
  `answer_questions` ask them at inference.

Token order inside a row does not matter to the transformer, only masks and RoPE positions do, so the understanding
expert's tokens and the generation expert's tokens sit in two dense blocks and no per-token routing is needed; masks
are built from lengths and segment ids by broadcasting, with no per-sample Python. Both forwards equal the packed
inference and training paths of `BagelModel` (tests/shapes/test_pretraining.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

from ..flow import add_noise, sample_timesteps
from ..models.bagel import BagelModel
from ..models.bagel.image_processing import grid_position_ids, patchify
from .pretraining_data import GenerationBank, UnderstandingRows


def vit_features(model: BagelModel, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SigLIP features `(B, patches, vit_hidden)` of same-size images and their position-table rows `(patches,)`."""
    batch, _, height, width = pixels.shape
    p = model.config.vit_config.patch_size
    patches = patchify(pixels, p)
    positions = grid_position_ids((height // p, width // p), model.config.vit_max_num_patch_per_side)
    device = model.connector.fc1.weight.device
    positions = positions.to(device)
    valid = torch.ones(patches.shape[:2], dtype=torch.bool, device=device)
    features = model.vit_model.vision_model(patches.to(device), positions.expand(batch, -1), valid)
    return features, positions


def decoder_forward(
    model: BagelModel,
    und: torch.Tensor,
    gen: torch.Tensor | None,
    positions: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The MoT LLM over dense rows: `und` `(B, Lu, D)` tokens of the understanding expert, then `gen` `(B, Lg, D)` of
    the generation expert (or None); `positions` `(B, Lu + Lg)` RoPE positions; `mask` `(B, L, L)`, True = attend.

    The same computation as `BagelMoTDecoderLayer` per token, with the expert chosen by block instead of by index.
    """
    llm = model.language_model.model
    split = und.shape[1]
    cos, sin = llm.rotary_emb(und, positions)
    attend_mask = mask[:, None]
    for layer in llm.layers:
        attention = layer.self_attn
        heads, kv_heads = attention.num_heads, attention.num_kv_heads
        blocks = [(und, layer.input_layernorm, attention.q_proj, attention.k_proj, attention.v_proj)]
        norms = [(attention.q_norm, attention.k_norm)]
        if gen is not None:
            blocks.append(
                (
                    gen,
                    layer.input_layernorm_moe_gen,
                    attention.q_proj_moe_gen,
                    attention.k_proj_moe_gen,
                    attention.v_proj_moe_gen,
                )
            )
            norms.append((attention.q_norm_moe_gen, attention.k_norm_moe_gen))
        queries, keys, values = [], [], []
        for (hidden, norm, q_proj, k_proj, v_proj), (q_norm, k_norm) in zip(blocks, norms):
            normed = norm(hidden)
            queries.append(q_norm(q_proj(normed).unflatten(-1, (heads, -1))))
            keys.append(k_norm(k_proj(normed).unflatten(-1, (kv_heads, -1))))
            values.append(v_proj(normed).unflatten(-1, (kv_heads, -1)))
        query, key = apply_rotary_pos_emb(torch.cat(queries, 1), torch.cat(keys, 1), cos, sin, unsqueeze_dim=2)
        value = torch.cat(values, 1).transpose(1, 2)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        groups = heads // kv_heads
        # Attention in float32 even under bf16 autocast: the CPU's bf16 attention backward is several times slower.
        with torch.autocast(query.device.type, enabled=False):
            output = F.scaled_dot_product_attention(
                query.float(), repeat_kv(key, groups).float(), repeat_kv(value, groups).float(), attn_mask=attend_mask
            )
        output = output.transpose(1, 2).flatten(2)
        und = und + attention.o_proj(output[:, :split])
        und = und + layer.mlp(layer.post_attention_layernorm(und))
        if gen is not None:
            gen = gen + attention.o_proj_moe_gen(output[:, split:])
            gen = gen + layer.mlp_moe_gen(layer.post_attention_layernorm_moe_gen(gen))
    return llm.norm(und), None if gen is None else llm.norm_moe_gen(gen)


def flow_velocity(
    model: BagelModel, captions: torch.Tensor, lengths: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The velocity the model predicts for noisy latents given wrapped captions, as `forward(pack_flow_inputs(...))`.

    Args:
        captions: `(B, T)` wrapped caption ids, right-padded.
        lengths: `(B,)` caption lengths; 0 drops the caption (the image then sits at position 0, as for CFG).
        x_t: `(B, N, latent_dim)` noisy latent tokens of a full 8x8 (`max_latent_size`) grid.
        t: `(B,)` flow times.

    Returns:
        `(B, N, latent_dim)` float32.
    """
    batch, width = captions.shape
    num_latent = x_t.shape[1]
    device = captions.device
    side = model.config.max_latent_size
    if num_latent != side * side:
        raise ValueError(f"x_t has {num_latent} latent tokens; the fast path draws full {side}x{side} grids")
    embed = model.language_model.model.embed_tokens
    markers = torch.tensor([model.config.vision_start_token_id, model.config.vision_end_token_id], device=device)
    und = torch.cat([embed(captions), embed(markers).expand(batch, -1, -1)], dim=1)
    latent_positions = grid_position_ids((side, side), side).to(device).repeat(batch)
    gen = model.embed_latents(x_t.reshape(batch * num_latent, -1), t.repeat_interleave(num_latent), latent_positions)
    gen = gen.view(batch, num_latent, -1)

    slots = torch.arange(width, device=device)
    text_valid = slots[None, :] < lengths[:, None]  # (B, T)
    chunk = 2 + num_latent  # the image markers and the latent tokens
    total = width + chunk
    mask = torch.zeros(batch, total, total, dtype=torch.bool, device=device)
    causal = slots[:, None] >= slots[None, :]
    # A padded caption slot sees itself (so that no softmax row is empty) and is never seen by a real token.
    mask[:, :width, :width] = (causal[None] & text_valid[:, None, :]) | torch.eye(
        width, dtype=torch.bool, device=device
    )[None]
    mask[:, width:, :width] = text_valid[:, None, :]
    mask[:, width:, width:] = True
    positions = torch.cat([slots.expand(batch, -1), lengths[:, None].expand(batch, chunk)], dim=1)
    _, hidden = decoder_forward(model, und, gen, positions, mask)
    return model.llm2vae(hidden).float()


def answer_logits(model: BagelModel, rows: UnderstandingRows) -> torch.Tensor:
    """Next-token logits `(B, R, vocab)` at every question token of understanding rows (see `UnderstandingRows`)."""
    batch, width = rows.tokens.shape
    device = rows.tokens.device
    features, vit_positions = vit_features(model, rows.pixels)
    vit_tokens = model.connector(features) + model.vit_pos_embed(vit_positions)
    embed = model.language_model.model.embed_tokens
    start = embed(torch.tensor([model.config.vision_start_token_id], device=device)).expand(batch, -1, -1)
    end = embed(torch.tensor([model.config.vision_end_token_id], device=device)).expand(batch, -1, -1)
    und = torch.cat([start, vit_tokens, end, embed(rows.tokens)], dim=1)
    image = vit_tokens.shape[1] + 2
    slots = torch.arange(width, device=device)
    mask = torch.zeros(batch, image + width, image + width, dtype=torch.bool, device=device)
    mask[:, :image, :image] = True
    mask[:, image:, :image] = True
    same = rows.segments[:, :, None] == rows.segments[:, None, :]
    mask[:, image:, image:] = same & (slots[:, None] >= slots[None, :])[None]
    positions = torch.cat([torch.zeros(batch, image, dtype=torch.long, device=device), rows.positions], dim=1)
    hidden, _ = decoder_forward(model, und, None, positions, mask)
    return model.language_model.lm_head(hidden[:, image:])


def answer_objective(model: BagelModel, rows: UnderstandingRows) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on the answer tokens of understanding rows, and the fraction of them predicted right."""
    logits = answer_logits(model, rows).float()
    learned = rows.targets != -100
    loss = F.cross_entropy(logits.flatten(0, 1), rows.targets.flatten(), ignore_index=-100)
    right = (logits.argmax(-1) == rows.targets) & learned
    return loss, right.sum() / learned.sum()


def flow_objective(
    model: BagelModel,
    captions: torch.Tensor,
    lengths: torch.Tensor,
    latents: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """Flow matching: the mean squared error between the predicted velocity and `noise - latents`."""
    velocity = flow_velocity(model, captions, lengths, add_noise(latents, noise, t), t)
    return (velocity - (noise - latents)).pow(2).mean()


def flow_batch(
    bank: GenerationBank,
    index: torch.Tensor,
    generator: torch.Generator,
    text_dropout: float,
    timestep_shift: float = 1.0,
) -> dict[str, torch.Tensor]:
    """`flow_objective`'s inputs for bank rows `index`: times (logit-normal, then shifted towards noise by
    `timestep_shift`), noise and caption dropout, all drawn from `generator`."""
    latents = bank.latents[index]
    batch = len(index)
    t = sample_timesteps(batch, generator=generator, shift=timestep_shift)
    noise = torch.randn(latents.shape, generator=generator)
    dropped = torch.rand(batch, generator=generator) < text_dropout
    lengths = torch.where(dropped, 0, bank.lengths[index])
    return {"captions": bank.captions[index], "lengths": lengths, "latents": latents, "noise": noise, "t": t}
