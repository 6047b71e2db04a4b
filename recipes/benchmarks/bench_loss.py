"""Cost of the SRUM objectives over plain flow matching, per training step, on BAGEL and BLIP3o (CPU or GPU).

Every variant runs the same model on the same rollout rows (one prompt group of candidates), through
`SRUMTrainer.training_step` (forward, loss, backward) followed by gradient clipping and an AdamW step, i.e. what one
optimizer step of `SRUMTrainer.train` does:

- `plain`: flow matching with a plain MSE, no rewards: t and the noise are drawn batched from one generator.
- `self`: SRUM as the trainer runs it: the collator builds the reward maps, every row draws from its own generator,
  `srum_loss` (reward-weighted error plus the "self" anchor) and the logged metrics (one gather per step).
- `reference`: SRUM with `constraint="reference"`, which adds a no-grad forward of the reference model (a frozen copy
  under full training; under LoRA the same model with its adapter disabled).
- `nft`: the negative-aware loss (`loss_type="nft"`): the group-centred token weights and one no-grad forward of the
  old model (its trainable weights swapped in and back), then `nft_loss`. Its goal: at most 1.45x `plain`.

Each is measured with the generation parameters trained in full and with LoRA (the model's generation preset). The
variants are interleaved round by round and the medians reported; then the pieces a step adds to plain flow matching
(reward maps, loss, metrics) are timed on their own to show where any overhead goes.

Run: `python recipes/benchmarks/bench_loss.py` (options: `--models`, `--rounds`, `--batch-size`, `--threads`).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset
from PIL import Image
from transformers.utils import logging as hf_logging

from trl_srum import SRUMConfig, SRUMTrainer
from trl_srum.collator import stored_latents
from trl_srum.flow import add_noise, sample_timesteps
from trl_srum.loss import nft_loss, srum_loss
from trl_srum.metrics import StepMetrics
from trl_srum.models.bagel import BagelModel
from trl_srum.models.bagel.tiny import build_word_level_tokenizer, tiny_bagel_config
from trl_srum.models.blip3o.tiny import tiny_blip3o
from trl_srum.reward_map import build_reward_map
from trl_srum.rollout import ROLLOUT_FEATURES, STATUS_OK, make_row_id


PROMPT = "a red circle above two blue squares and a green triangle next to a yellow star in the middle of the image"
VARIANTS = ("plain", "self", "reference", "nft")
DEFAULT_ROUNDS = {"bagel": 60, "blip3o": 200}


def clock() -> float:
    """CPU time of this process on CPU (single-threaded runs then ignore other load on a shared machine); wall time
    on GPU, where the device does the work."""
    return time.perf_counter() if torch.cuda.is_available() else time.process_time()


# ---------------------------------------------------------------------------------------------------- models and data
def bagel_model() -> BagelModel:
    """4 layers of hidden 128 (two experts); 64x64-pixel images are 16x16 latent tokens of 16 channels."""
    tokenizer = build_word_level_tokenizer()
    config = tiny_bagel_config(
        tokenizer,
        llm_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        max_latent_size=16,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BagelModel(config)
    model.tokenizer = tokenizer
    return model


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, int]]] = {
    "bagel": (bagel_model, (64, 64)),
    "blip3o": (lambda: tiny_blip3o(seed=0, with_decoder=False), (32, 32)),  # 8x8 tokens of 32 channels
}


def rollout_rows(model: Any, image_size: tuple[int, int], batch_size: int) -> list[dict[str, Any]]:
    """Rows as the trainer's data loader hands them to the collator (read back from a rollout `Dataset`)."""
    grid = model.latent_grid(image_size)
    generator = torch.Generator().manual_seed(0)
    width, height = image_size
    rows = []
    for index in range(batch_size):
        latents = torch.randn(grid[0] * grid[1], _latent_dim(model), generator=generator)
        rows.append(
            {
                "row_id": make_row_id("p0", index),
                "prompt_id": "p0",  # the candidates of one prompt: the negative-aware loss compares them
                "prompt": PROMPT,
                "category": "",
                "candidate_index": index,
                "seed": index,
                "image": Image.new("RGB", image_size),
                "latents": latents.numpy(),
                "latent_grid": list(grid),
                "reasoning": None,
                "global_score": 0.5 - 0.25 * index,
                "regions": [
                    {"bbox": box, "label": label, "score": score, "relevance": None, "source": ""}
                    for box, label, score in (
                        ([0, 0, width // 2, height // 2], "a", 0.8),
                        ([width // 4, height // 3, width, height], "b", -0.5),
                        ([2, 2, width // 3, height - 2], "c", 0.1),
                    )
                ],
                "global_judge_output": "",
                "region_judge_output": "",
                "status": STATUS_OK,
                "error": "",
            }
        )
    dataset = Dataset.from_list(rows, features=ROLLOUT_FEATURES)
    return [dataset[i] for i in range(len(dataset))]


def _latent_dim(model: Any) -> int:
    config = model.config
    return config.latent_dim if hasattr(config, "latent_dim") else config.dit_config.in_channels


# ------------------------------------------------------------------------------------------------ the plain baseline
def plain_collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a flow-matching trainer without rewards needs: prompts, the stored latents as tensors (converted as the
    SRUM collator converts them), grids."""
    latents, grids = zip(*(stored_latents(row) for row in rows), strict=True)
    return {"prompts": [str(row["prompt"]) for row in rows], "latents": list(latents), "grids": list(grids)}


class PlainFlowMatchingTrainer(SRUMTrainer):
    """The same trainer with the plain flow-matching loss: batched draws from one generator, MSE to `noise - x_0`."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        unwrapped = self.accelerator.unwrap_model(model)
        if not hasattr(self, "_generator"):
            self._generator = torch.Generator().manual_seed(args.seed)
        latents = inputs["latents"]
        timesteps = sample_timesteps(len(latents), generator=self._generator, sampling=args.timestep_sampling)
        noises = [torch.randn(x.shape, generator=self._generator) for x in latents]
        device = self.accelerator.device
        latents = [x.to(device) for x in latents]
        noises = [n.to(device) for n in noises]
        noisy = [add_noise(x, n, t) for x, n, t in zip(latents, noises, timesteps.to(device), strict=True)]
        flow_inputs = unwrapped.prepare_flow_inputs(inputs["prompts"], noisy, inputs["grids"], timesteps)
        velocity = model(**flow_inputs).velocity
        loss = (velocity.float() - (torch.cat(noises) - torch.cat(latents))).pow(2).mean()
        return (loss, velocity) if return_outputs else loss


# ---------------------------------------------------------------------------------------------------------- variants
class Variant:
    """One trainer (its own model copy and AdamW) and the collator its data path uses."""

    def __init__(self, family: str, variant: str, lora: bool, output_dir: str, batch_size: int):
        from peft import LoraConfig

        build, self.image_size = MODELS[family]
        config = SRUMConfig(
            output_dir=output_dir,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            per_device_train_batch_size=batch_size,
            learning_rate=1e-5,
            lr_scheduler_type="constant",
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            text_dropout=0.0,  # identical sequence lengths in every variant and step
            constraint={"reference": "reference", "nft": "none"}.get(variant, "self"),
            loss_type="nft" if variant == "nft" else "srum",
        )
        model = build()
        rows = rollout_rows(model, self.image_size, batch_size)
        rows = [dict(row) for row in rows]
        trainer_class = PlainFlowMatchingTrainer if variant == "plain" else SRUMTrainer
        # LoRA: a flow trainer's usual choice of rank; the targets are the model's generation preset.
        peft_config = LoraConfig(r=16, lora_alpha=32) if lora else None
        dataset = Dataset.from_list(rows, features=ROLLOUT_FEATURES)
        self.trainer = trainer_class(model, config, train_dataset=dataset, peft_config=peft_config)
        if variant == "nft":
            self.trainer.refresh_old_model()  # what `train` does when it starts
        self.trainer.create_optimizer()
        self.trainer.current_gradient_accumulation_steps = 1  # set by `train()` otherwise
        self.parameters = [p for p in self.trainer.model.parameters() if p.requires_grad]
        self.collate = plain_collate if variant == "plain" else self.trainer.data_collator
        self.rows = rows
        self._compute_loss, self._loss_seconds = self.trainer.compute_loss, 0.0
        self.trainer.compute_loss = self._timed_compute_loss

    def step(self) -> dict[str, float]:
        """One optimizer step; returns the seconds of each phase and of the whole."""
        trainer = self.trainer
        start = clock()
        batch = self.collate(self.rows)
        collated = clock()
        trainer.training_step(trainer.model, batch)  # input preparation, compute_loss, backward
        stepped = clock()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        end = clock()
        trainer.state.global_step += 1  # new per-row draws next step, as in training
        return {
            "collate": collated - start,
            "compute_loss (forward, loss, metrics)": self._loss_seconds,
            "rest of training_step (backward)": stepped - collated - self._loss_seconds,
            "clip + AdamW": end - stepped,
            "total": end - start,
        }

    def _timed_compute_loss(self, *args: Any, **kwargs: Any) -> Any:
        start = clock()
        result = self._compute_loss(*args, **kwargs)
        self._loss_seconds = clock() - start
        return result


# ---------------------------------------------------------------------------------------------------- measurements
def step_times(family: str, rounds: int, warmup: int, batch_size: int) -> dict[tuple[str, bool], list[dict]]:
    """Phase seconds of every timed step of every (variant, lora) pair; entry i of each list is from round i."""
    with tempfile.TemporaryDirectory() as output_dir:
        variants = {
            (variant, lora): Variant(family, variant, lora, output_dir, batch_size)
            for lora in (False, True)
            for variant in VARIANTS
        }
        times: dict[tuple[str, bool], list[dict[str, float]]] = {key: [] for key in variants}
        keys = list(variants)
        for round_index in range(warmup + rounds):
            # rotate the order every round, so no variant always runs right after the same one
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                elapsed = variants[key].step()
                if round_index >= warmup:
                    times[key].append(elapsed)
        return times


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = clock()
        function()
        times.append(clock() - start)
    return statistics.median(times)


def srum_pieces(family: str, batch_size: int, repeats: int) -> list[tuple[str, float, float]]:
    """(piece, SRUM ms, plain ms) for the parts of a step, beyond the model's forwards, that SRUM adds."""
    with tempfile.TemporaryDirectory() as output_dir:
        srum = Variant(family, "nft", False, output_dir, batch_size)
    collator, rows = srum.trainer.data_collator, srum.rows
    batch = collator(rows)
    plain_batch = plain_collate(rows)

    latents = torch.cat(plain_batch["latents"])
    noise = torch.randn_like(latents)
    rewards, weights = torch.cat(batch["token_rewards"]), torch.cat(batch["token_weights"])
    velocity = torch.randn_like(latents, requires_grad=True)
    old = torch.randn_like(latents)

    def backward(loss: torch.Tensor) -> None:
        loss.backward()
        velocity.grad = None

    def metrics() -> None:
        step = StepMetrics()
        for name, value in srum_loss(velocity, noise, latents, rewards)[1].items():
            step.add(name, value)
        step.add_moments("reward", rewards)
        step.add_moments("global_score", torch.tensor([0.5, -0.25]), spread=False)
        step.reduce(srum.trainer.accelerator.gather, srum.trainer.accelerator.device)

    return [
        ("collate (reward maps and token weights / latents to tensors)", median_seconds(lambda: collator(rows), repeats),
         median_seconds(lambda: plain_collate(rows), repeats)),
        ("srum_loss + its backward (vs MSE)", median_seconds(lambda: backward(srum_loss(velocity, noise, latents, rewards)[0]), repeats),
         median_seconds(lambda: backward((velocity - (noise - latents)).pow(2).mean()), repeats)),
        ("nft_loss + its backward (vs MSE)", median_seconds(lambda: backward(nft_loss(velocity, old, noise, latents, weights)[0]), repeats),
         median_seconds(lambda: backward((velocity - (noise - latents)).pow(2).mean()), repeats)),
        ("metrics (statistics + one gather)", median_seconds(metrics, repeats), 0.0),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--rounds", type=int, default=None, help=f"timed rounds, every variant steps once a round ({DEFAULT_ROUNDS})"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives stable timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")

    device = (
        f"{torch.cuda.get_device_name()}, wall time"
        if torch.cuda.is_available()
        else f"CPU, {args.threads} thread(s), process CPU time"
    )
    print(f"torch {torch.__version__}, {device}; batch of {args.batch_size} rollout rows per step\n")
    rounds = args.rounds
    for family in args.models:
        build, image_size = MODELS[family]
        model = build()
        grid = model.latent_grid(image_size)
        total = sum(p.numel() for p in model.parameters())
        generation = sum(
            p.numel() for n, p in model.named_parameters() if n in set(model.generation_parameter_names())
        )
        print(
            f"## {family}: {total:,} parameters ({generation:,} generation); {image_size[0]}x{image_size[1]} px "
            f"images = {grid[0]}x{grid[1]} latent tokens of {_latent_dim(model)} channels"
        )
        del model
        times = step_times(family, rounds or DEFAULT_ROUNDS[family], args.warmup, args.batch_size)
        print(f"median of {len(times[('plain', False)])} interleaved rounds after {args.warmup} warm-up rounds")
        print(
            "| trained | plain FM (ms/step) | SRUM self (ms/step) | self / plain | SRUM reference (ms/step) "
            "| reference / plain | NFT (ms/step) | NFT / plain |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for lora in (False, True):
            plain, self_, reference, nft = ([t["total"] for t in times[(variant, lora)]] for variant in VARIANTS)

            def ratio(variant: list[float], plain: list[float] = plain) -> str:
                # ratio of the medians, and (in brackets) the median of the per-round ratios, which cancels slow
                # drifts of a shared machine
                paired = statistics.median(v / p for v, p in zip(variant, plain, strict=True))
                return f"{statistics.median(variant) / statistics.median(plain):.3f} ({paired:.3f})"

            label = "LoRA r=16 (generation preset)" if lora else "generation parameters (full)"
            print(
                f"| {label} | {statistics.median(plain) * 1e3:.2f} | {statistics.median(self_) * 1e3:.2f} "
                f"| {ratio(self_)} | {statistics.median(reference) * 1e3:.2f} | {ratio(reference)} "
                f"| {statistics.median(nft) * 1e3:.2f} | {ratio(nft)} |"
            )
        print(f"\nPhases of the step, generation parameters trained in full ({family}, medians of the same rounds):")
        print("| phase | plain (ms) | SRUM self (ms) | difference (ms) | SRUM reference (ms) | NFT (ms) |")
        print("|---|---:|---:|---:|---:|---:|")
        for phase in times[("plain", False)][0]:
            plain, self_, reference, nft = (
                statistics.median(t[phase] for t in times[(variant, False)]) * 1e3 for variant in VARIANTS
            )
            print(f"| {phase} | {plain:.2f} | {self_:.2f} | {self_ - plain:+.2f} | {reference:.2f} | {nft:.2f} |")
        print(f"\nSRUM-only pieces of one step ({family}, medians of 200 calls):")
        print("| piece | SRUM (ms) | plain (ms) | difference (ms) |")
        print("|---|---:|---:|---:|")
        for piece, srum_seconds, plain_seconds in srum_pieces(family, args.batch_size, 200):
            print(
                f"| {piece} | {srum_seconds * 1e3:.3f} | {plain_seconds * 1e3:.3f} | "
                f"{(srum_seconds - plain_seconds) * 1e3:+.3f} |"
            )
        print()
    full_size_data_path()


def full_size_data_path() -> None:
    """Per-row costs of the data path at the released scale (1024x1024 images, BAGEL-7B latents), CPU-side."""
    image_size, grid, latent_dim = (1024, 1024), (64, 64), 64
    regions = [
        {"bbox": [64 * i, 48 * i, 64 * i + 400, 48 * i + 300], "score": 0.9 - 0.4 * i, "label": str(i)}
        for i in range(5)
    ]
    latents = torch.randn(grid[0] * grid[1], latent_dim).tolist()  # what the data loader hands over per row
    print(f"Data path of one row at 1024x1024 px (64x64 tokens of {latent_dim} channels, 5 regions), medians of 20:")
    print("| piece | ms/row |")
    print("|---|---:|")
    for mode in ("official", "signed"):
        seconds = median_seconds(lambda m=mode: build_reward_map(0.5, regions, image_size, grid, m), 20)
        print(f"| reward map ({mode}) | {seconds * 1e3:.2f} |")
    # both flow-matching variants pay this: the data loader hands the stored latents over as lists of lists
    row = {"latents": latents, "latent_grid": list(grid)}
    seconds = median_seconds(lambda: torch.as_tensor(latents, dtype=torch.float32), 20)
    print(f"| stored latents to a tensor with `torch.as_tensor` (the collator before) | {seconds * 1e3:.2f} |")
    seconds = median_seconds(lambda: stored_latents(row), 20)
    print(f"| stored latents to a tensor in the collator (through numpy) | {seconds * 1e3:.2f} |")


if __name__ == "__main__":
    main()
