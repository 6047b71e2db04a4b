"""Text decoding, answer scoring and image sampling with BAGEL: at the token-id level, and `generate_images`, the
protocol's drawing in words (prompts in, images out, with think mode).

These functions compose `BagelModel`'s chunk primitives (prefill text or images into a KV cache, one text step, one
velocity prediction). The string-level methods of `BagelModel` call them (`generate_images` here, the understanding
side in `understanding.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ...protocol import GeneratedImage
from .cache import KVCache
from .image_processing import tensor_to_pil
from .sampling import SamplerSettings, guide_velocity, timestep_grid


# The official inferencer's system prompt for drawing after a written plan (think mode).
GEN_THINK_SYSTEM_PROMPT = (
    "You should first think about the planning process in the mind and then generate the image. \n"
    "The planning process is enclosed within <think> </think> tags, i.e. <think> planning process here </think> "
    "image here"
)


class BagelModel(Protocol):
    """The chunk primitives of `modeling_bagel.BagelModel` that these functions compose (typed here so that the
    model file and this one do not import each other)."""

    config: Any
    language_model: Any

    def new_cache(self, batch_size: int) -> KVCache: ...
    def wrap_text(self, token_ids: Sequence[int]) -> list[int]: ...
    def prefill_text(self, cache: KVCache, token_ids: Sequence[Sequence[int]], **kwargs: Any) -> Any: ...
    def forward_text(self, cache: KVCache, token_ids: Sequence[Sequence[int]], **kwargs: Any) -> Any: ...
    def predict_velocity(
        self,
        cache: KVCache,
        latent_tokens: torch.Tensor,
        timesteps: torch.Tensor,
        grid: tuple[int, int],
        **kwargs: Any,
    ) -> torch.Tensor: ...
    def check_latent_grid(self, grid: tuple[int, int]) -> None: ...
    def latent_grid(self, image_size: tuple[int, int]) -> tuple[int, int]: ...
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]: ...
    def require_tokenizer(self) -> Any: ...
    def decode_latent_tokens(self, latent_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor: ...


@dataclass
class TextGenerationOutput:
    token_ids: list[list[int]] = field(metadata={"help": "Per sequence, the generated ids without <|im_end|>."})
    logits: list[torch.Tensor] | None = field(
        default=None, metadata={"help": "Per sequence, the logits of each decoding step, shape (steps, vocab)."}
    )


@dataclass
class SamplingTrace:
    """Every intermediate value of an image sampling run, for inspection and parity tests."""

    timesteps: list[float] = field(default_factory=list, metadata={"help": "t of each network pass."})
    x_t: list[torch.Tensor] = field(default_factory=list, metadata={"help": "Input of each pass, (batch, L, C)."})
    v_cond: list[torch.Tensor] = field(default_factory=list, metadata={"help": "Conditional velocity per pass."})
    v_uncond_text: list[torch.Tensor] = field(
        default_factory=list, metadata={"help": "Text-unconditional velocity, only for passes with guidance."}
    )
    guided_steps: list[int] = field(default_factory=list, metadata={"help": "Indexes of the passes with guidance."})
    velocity: list[torch.Tensor] = field(default_factory=list, metadata={"help": "Velocity used in each update."})


def generate_text_ids(
    model: BagelModel,
    cache: KVCache,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    generators: Sequence[torch.Generator] | None = None,
    output_logits: bool = False,
) -> TextGenerationOutput:
    """Continue every row of `cache` with a new answer: feed `<|im_start|>`, then decode until `<|im_end|>`.

    The cache is not modified (decoding appends to copies).

    Args:
        model: the model.
        cache: the contexts, one row per answer.
        max_new_tokens: the most tokens per answer (`<|im_end|>` excluded).
        do_sample: sample from `softmax(logits / temperature)` instead of taking the argmax.
        temperature: sampling temperature (> 0).
        generators: one per row; row b draws its tokens from `generators[b]` only.
        output_logits: also return the logits of every step.
    """
    batch = cache.batch_size
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature={temperature}: sampling needs a positive temperature (or do_sample=False).")
    if generators is not None and len(generators) != batch:
        raise ValueError(f"Got {len(generators)} generators for {batch} sequences; pass one per sequence.")
    config = model.config
    tokens = [config.im_start_token_id] * batch
    generated: list[list[int]] = [[] for _ in range(batch)]
    step_logits: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    finished = [False] * batch
    for _ in range(max_new_tokens):
        output = model.forward_text(cache, [[token] for token in tokens], output_logits=True)
        cache = output.cache
        logits = torch.cat(output.logits).float()  # (batch, vocab)
        if do_sample:
            probabilities = torch.softmax(logits / temperature, dim=-1).cpu()
            tokens = [
                int(torch.multinomial(probabilities[b], 1, generator=None if generators is None else generators[b]))
                for b in range(batch)
            ]
        else:
            tokens = logits.argmax(dim=-1).tolist()
        for b in range(batch):
            if finished[b]:
                continue
            if output_logits:
                step_logits[b].append(logits[b])
            if tokens[b] == config.im_end_token_id:
                finished[b] = True
            else:
                generated[b].append(tokens[b])
        if all(finished):
            break
    logits_out = [torch.stack(rows) if rows else torch.empty(0) for rows in step_logits] if output_logits else None
    return TextGenerationOutput(token_ids=generated, logits=logits_out)


def score_answer_ids(
    model: BagelModel, cache: KVCache, question_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]]
) -> torch.Tensor:
    """`log p(answer | context, question)` summed over the answer's tokens, for every pair, in one forward.

    Each pair is the sequence `[question segment] + [<|im_start|>] + answer` on top of the single context row of
    `cache`, exactly what decoding would have fed.

    Returns:
        shape `(len(question_ids), len(answer_ids))`, float32.
    """
    if cache.batch_size != 1:
        raise ValueError(f"score_answer_ids shares one context; got a cache of {cache.batch_size} rows.")
    sequences, prefix_lengths = [], []
    for question in question_ids:
        prefix = [*model.wrap_text(question), model.config.im_start_token_id]
        for answer in answer_ids:
            sequences.append(prefix + list(answer))
            prefix_lengths.append(len(prefix))
    output = model.forward_text(
        cache, sequences, cache_rows=[0] * len(sequences), output_logits=True, update_cache=False
    )
    scores = []
    for logits, prefix_length, sequence in zip(output.logits, prefix_lengths, sequences):
        answer = torch.tensor(sequence[prefix_length:], device=logits.device)
        # Logits at position i predict token i + 1.
        log_probs = torch.log_softmax(logits[prefix_length - 1 : -1].float(), dim=-1)
        scores.append(log_probs.gather(1, answer[:, None]).sum())
    return torch.stack(scores).view(len(question_ids), len(answer_ids))


def generate_image_latents(
    model: BagelModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    grid: tuple[int, int],
    generators: Sequence[torch.Generator] | None = None,
    noise: torch.Tensor | None = None,
    settings: SamplerSettings | None = None,
    system_prompt_ids: Sequence[int] | None = None,
    reasoning_ids: Sequence[Sequence[int]] | None = None,
    trace: SamplingTrace | None = None,
) -> torch.Tensor:
    """Draw latent images by rectified flow with classifier-free guidance.

    The contexts are prefilled once into KV caches, one row per prompt and branch; each sampler pass then runs only
    the image chunk:

    - conditional: `[system prompt] + prompt + [reasoning]`;
    - text-unconditional: `[system prompt]` (empty for plain text-to-image, so the image sits at position 0);
    - image-unconditional (only when `settings.cfg_img_scale > 1`): `[system prompt] + prompt`, without the reasoning
      (the official think-mode context; there are no input images here).

    Args:
        model: the model.
        prompt_ids: per image, the prompt's token ids (unwrapped).
        grid: the latent grid `(rows, cols)` of every image.
        generators: per image, the generator of its initial noise (image i's noise comes only from `generators[i]`).
        noise: the initial noise instead, shape `(batch, rows * cols, latent_dim)`.
        settings: the sampler settings (the official text-to-image defaults if None).
        system_prompt_ids: ids of a system prompt segment before each prompt (think mode), or None.
        reasoning_ids: per image, ids of a think text segment after its prompt, or None.
        trace: if given, filled with every intermediate value.

    Returns:
        The final normalised latent tokens, shape `(batch, rows * cols, latent_dim)`, float32.
    """
    settings = settings or SamplerSettings()
    batch, num_latent = len(prompt_ids), grid[0] * grid[1]
    model.check_latent_grid(grid)
    device = model.language_model.model.embed_tokens.weight.device
    if noise is None:
        if generators is None or len(generators) != batch:
            raise ValueError(f"Pass one generator per prompt ({batch}) or the initial noise.")
        noise = torch.stack(
            [torch.randn(num_latent, model.config.latent_dim, generator=generator) for generator in generators]
        )
    if tuple(noise.shape) != (batch, num_latent, model.config.latent_dim):
        raise ValueError(
            f"Initial noise of shape {tuple(noise.shape)}; expected ({batch}, {num_latent}, {model.config.latent_dim})."
        )

    # Contexts: one KV cache row per (branch, prompt).
    base = model.new_cache(batch)
    if system_prompt_ids is not None:
        base = model.prefill_text(base, [system_prompt_ids] * batch).cache
    with_prompt = model.prefill_text(base, prompt_ids).cache
    conditional = with_prompt if reasoning_ids is None else model.prefill_text(with_prompt, reasoning_ids).cache
    branches = [conditional, base] + ([with_prompt] if settings.uses_image_guidance else [])
    cache = KVCache.concat(branches)
    all_rows = torch.arange(len(branches) * batch, device=device)  # the conditional rows come first

    timesteps = timestep_grid(settings.num_timesteps, settings.timestep_shift).to(device)
    x_t = noise.to(device=device, dtype=torch.float32)
    for step in range(settings.num_timesteps - 1):
        t = timesteps[step]
        guided = settings.guidance_active(float(t))
        num_branches = len(branches) if guided else 1
        rows = all_rows[: num_branches * batch]
        velocities = model.predict_velocity(
            cache, x_t.repeat(num_branches, 1, 1), t.repeat(len(rows)), grid, cache_rows=rows
        ).chunk(num_branches)
        if guided:
            v_uncond_image = velocities[2] if settings.uses_image_guidance else None
            velocity = guide_velocity(velocities[0], velocities[1], v_uncond_image, settings)
        else:
            velocity = velocities[0]
        if trace is not None:
            trace.timesteps.append(float(t))
            trace.x_t.append(x_t)
            trace.v_cond.append(velocities[0])
            trace.velocity.append(velocity)
            if guided:
                trace.guided_steps.append(step)
                trace.v_uncond_text.append(velocities[1])
        x_t = x_t - (timesteps[step] - timesteps[step + 1]) * velocity
    return x_t


def generate_images(
    model: BagelModel,
    prompts: Sequence[str],
    *,
    generators: Sequence[torch.Generator],
    image_size: tuple[int, int],
    think: bool = False,
    max_think_tokens: int = 1000,
    **sampling_kwargs: Any,
) -> list[GeneratedImage]:
    """Draw one image per prompt; prompt i takes all of its randomness from `generators[i]`.

    Args:
        prompts: the text prompts.
        generators: one `torch.Generator` per prompt (its initial noise, and its think text when sampled).
        image_size: `(width, height)` in pixels, multiples of `config.latent_stride`.
        think: first write a plan (greedy, under the generation think system prompt), then draw conditioned on it.
        max_think_tokens: the longest plan.
        sampling_kwargs: fields of `SamplerSettings` (`num_timesteps`, `cfg_text_scale`, ...).
    """
    if len(generators) != len(prompts):
        raise ValueError(f"Got {len(generators)} generators for {len(prompts)} prompts; pass one per prompt.")
    grid = model.latent_grid(image_size)
    settings = SamplerSettings(**sampling_kwargs)
    prompt_ids = model.tokenize(prompts)
    system_ids, reasoning, reasoning_ids = None, None, None
    if think:
        system_ids = model.tokenize([GEN_THINK_SYSTEM_PROMPT])[0]
        cache = model.new_cache(len(prompts))
        cache = model.prefill_text(cache, [system_ids] * len(prompts)).cache
        cache = model.prefill_text(cache, prompt_ids).cache
        planned = generate_text_ids(model, cache, max_new_tokens=max_think_tokens)
        # As the official code: the plan is decoded to a string and re-tokenised as a new text segment.
        reasoning = model.require_tokenizer().batch_decode(planned.token_ids, skip_special_tokens=True)
        reasoning_ids = model.tokenize(reasoning)
    latents = generate_image_latents(
        model,
        prompt_ids,
        grid=grid,
        generators=generators,
        settings=settings,
        system_prompt_ids=system_ids,
        reasoning_ids=reasoning_ids,
    )
    return [
        GeneratedImage(
            image=tensor_to_pil(model.decode_latent_tokens(tokens, grid)),
            latents=tokens.cpu(),
            grid=grid,
            reasoning=None if reasoning is None else reasoning[index],
        )
        for index, tokens in enumerate(latents)
    ]
