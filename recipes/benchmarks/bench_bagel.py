"""Benchmark two efficiency properties of the BAGEL implementation on a tiny random configuration (CPU or GPU).

(a) Sampler cost per step as the prompt grows. The text context is prefilled once into a KV cache and every sampler
    pass runs only the image chunk, so the per-step cost should stay nearly flat; for comparison, the same pass with
    the prompt recomputed every step (what a cache-less sampler would do).
(b) Training step time (forward, backward, AdamW) with every parameter trainable versus only the generation
    parameters (`generation_parameter_names`, the understanding expert frozen).

Run: `python recipes/benchmarks/bench_bagel.py` (options: `--threads`, `--repeats`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from trl_srum.models.bagel import BagelModel
from trl_srum.models.bagel.cache import KVCache
from trl_srum.models.bagel.tiny import tiny_bagel_config


PROMPT_LENGTHS = (8, 64, 256, 1024)
GRID = (16, 16)  # 256 latent tokens per image


def bench_model(seed: int = 0) -> BagelModel:
    config = tiny_bagel_config(
        llm_config={
            "vocab_size": 512,
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
        },
        max_latent_size=16,
        im_start_token_id=1,
        im_end_token_id=2,
        vision_start_token_id=3,
        vision_end_token_id=4,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BagelModel(config)


def mean_seconds(repeats: int, function: Callable[..., object], *args: object) -> float:
    function(*args)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        function(*args)
    return (time.perf_counter() - start) / repeats


def cached_step(model: BagelModel, cache: KVCache, x_t: torch.Tensor, timesteps: torch.Tensor) -> None:
    model.predict_velocity(cache, x_t, timesteps, GRID)


def recomputed_step(model: BagelModel, prompt: list[int], x_t: torch.Tensor, timesteps: torch.Tensor) -> None:
    model(**model.pack_flow_inputs([prompt, None], list(x_t), [GRID, GRID], timesteps))


def training_step(
    model: BagelModel, optimizer: torch.optim.Optimizer, inputs: dict[str, torch.Tensor], target: torch.Tensor
) -> None:
    optimizer.zero_grad()
    (model(**inputs).velocity - target).pow(2).mean().backward()
    optimizer.step()


@torch.no_grad()
def sampler_step_costs(model: BagelModel, repeats: int) -> None:
    generator = torch.Generator().manual_seed(0)
    num_latent, latent_dim = GRID[0] * GRID[1], model.config.latent_dim
    x_t = torch.randn(2, num_latent, latent_dim, generator=generator)  # conditional + text-unconditional branches
    timesteps = torch.full((2,), 0.7)
    print(f"(a) sampler pass with CFG (2 branches), {num_latent} latent tokens, prompt cached vs recomputed")
    print("| prompt tokens | cached (ms/step) | ratio | recomputed (ms/step) | ratio |")
    print("|---:|---:|---:|---:|---:|")
    baseline = None
    for length in PROMPT_LENGTHS:
        prompt = torch.randint(5, 512, (length - 2,), generator=generator).tolist()
        conditional = model.prefill_text(model.new_cache(1), [prompt]).cache
        cache = KVCache.concat([conditional, model.new_cache(1)])

        cached = mean_seconds(repeats, cached_step, model, cache, x_t, timesteps)
        recomputed = mean_seconds(repeats, recomputed_step, model, prompt, x_t, timesteps)
        baseline = baseline or (cached, recomputed)
        print(
            f"| {length} | {cached * 1e3:.1f} | {cached / baseline[0]:.2f} | {recomputed * 1e3:.1f} | "
            f"{recomputed / baseline[1]:.2f} |"
        )


def training_step_costs(repeats: int) -> None:
    generator = torch.Generator().manual_seed(1)
    print("\n(b) training step (4 samples, 62-token prompts, 16x16 latent grids), AdamW")
    print("| trainable | parameters | ms/step | ratio |")
    print("|---|---:|---:|---:|")
    results = []
    for frozen_understanding in (False, True):
        model = bench_model().train()
        trainable = set(model.generation_parameter_names()) if frozen_understanding else None
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(not name.startswith("vae.") and (trainable is None or name in trainable))
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=1e-4)
        prompts = [torch.randint(5, 512, (60,), generator=generator).tolist() for _ in range(4)]
        noisy = [torch.randn(GRID[0] * GRID[1], model.config.latent_dim, generator=generator) for _ in range(4)]
        target = torch.randn(4 * GRID[0] * GRID[1], model.config.latent_dim, generator=generator)
        inputs = model.pack_flow_inputs(prompts, noisy, [GRID] * 4, torch.rand(4, generator=generator))

        seconds = mean_seconds(repeats, training_step, model, optimizer, inputs, target)
        results.append(seconds)
        label = "generation only (understanding frozen)" if frozen_understanding else "all (VAE excluded)"
        count = sum(parameter.numel() for parameter in parameters)
        print(f"| {label} | {count:,} | {seconds * 1e3:.1f} | {seconds / results[0]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives stable timings).")
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions per measurement.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = bench_model().eval()
    llm = model.config.llm_config
    print(
        f"tiny BAGEL: LLM {llm.num_hidden_layers} layers x hidden {llm.hidden_size} (two experts), "
        f"{sum(p.numel() for p in model.parameters()):,} parameters; torch {torch.__version__}, "
        f"{args.threads} CPU thread(s), mean of {args.repeats} repeats\n"
    )
    sampler_step_costs(model, args.repeats)
    training_step_costs(args.repeats)


if __name__ == "__main__":
    main()
