"""Fast pretraining of the shapes-world BAGEL: cached data as tensors, a padded training forward, resumable chunks.

The model is the real `BagelModel` (`build_model`); the data are made by `trl_srum.shapes.pretraining_data` and the
training forward is `trl_srum.shapes.training_forward`, so that the hot loop only indexes tensors.

Training runs in chunks of `steps_per_chunk` steps. Everything a chunk draws is seeded by (seed, chunk index) and the
model's weights, and the training state (weights, their average, the optimiser) is saved after every chunk, so a killed
run resumes from its last chunk and reaches exactly the state an uninterrupted run would (tests/shapes/
test_pretraining.py). The recipe is `recipes/shapes/pretrain.py`.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..judge.prompts import concise_vocabulary
from ..models.bagel import BagelConfig, BagelModel
from ..models.bagel.conversion import special_token_ids_from_tokenizer
from ..models.bagel.tiny import build_word_level_tokenizer
from .pretraining_data import (
    GenerationBank,
    Scene,
    UnderstandingRows,
    WorldMix,
    own_scenes,
    pixels_of,
    random_train_spec,
    render_scenes,
    understanding_rows,
)
from .spec import vocabulary
from .tasks import QUESTION_WORDS
from .training_forward import answer_objective, flow_batch, flow_objective, vit_features


STATE_FILE = "training_state.pt"
# How pretraining draws the model's own samples (and measures it at the end): BAGEL's timestep grid with 12 steps and
# no classifier-free guidance, which halves the cost of the samples drawn every chunk. Kept apart from the shipped
# model's sampler settings (`shapes.pretrained.SHAPES_SAMPLING`) so that those can change without changing a run.
PRETRAINING_SAMPLING: dict[str, Any] = {
    "num_timesteps": 12,
    "timestep_shift": 3.0,
    "cfg_text_scale": 1.0,
    "cfg_interval": (0.4, 1.0),
    "cfg_renorm_type": "global",
    "cfg_renorm_min": 0.0,
}


# ------------------------------------------------------------------------------------------------------ the model
@dataclass
class ModelSize:
    """The sizes of a shapes-world BAGEL (the VAE's are fixed: 64 px -> 16x16x4 latents -> 8x8 tokens)."""

    llm_hidden: int = 128
    llm_layers: int = 4
    vit_hidden: int = 128
    vit_layers: int = 4
    vit_patch: int = 8
    image_size: int = 64


def shapes_vocabulary() -> list[str]:
    return sorted(set(vocabulary()) | set(concise_vocabulary()) | set(QUESTION_WORDS))


def build_model(size: ModelSize, seed: int) -> BagelModel:
    """A freshly initialised shapes-world BAGEL with its word-level tokenizer."""
    tokenizer = build_word_level_tokenizer(shapes_vocabulary())
    config = BagelConfig(
        llm_config={
            "vocab_size": len(tokenizer),
            "hidden_size": size.llm_hidden,
            "intermediate_size": size.llm_hidden * 5 // 2,
            "num_hidden_layers": size.llm_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        vit_config={
            "hidden_size": size.vit_hidden,
            "intermediate_size": size.vit_hidden * 2,
            "num_hidden_layers": size.vit_layers,
            "num_attention_heads": max(1, size.vit_hidden // 32),
            "image_size": size.image_size,
            "patch_size": size.vit_patch,
            "vision_use_head": False,
        },
        vae_config={
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [16, 32, 64],
            "layers_per_block": 1,
            # Flat-coloured scenes need no mid-block attention, and on a CPU it costs most of the VAE's time.
            "mid_block_add_attention": False,
            "latent_channels": 4,
            "norm_num_groups": 16,
            "scaling_factor": 1.0,
            "shift_factor": 0.0,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        },
        max_latent_size=size.image_size // 8,
        vit_max_num_patch_per_side=size.image_size // size.vit_patch,
        vae_min_image_size=size.image_size,
        vit_min_image_size=size.image_size,
        supports_grounding=True,
        prompt_style="concise",
        **special_token_ids_from_tokenizer(tokenizer),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BagelModel(config)
    model.tokenizer = tokenizer
    return model


def copy_vae(model: BagelModel, source: BagelModel) -> None:
    """Use `source`'s trained autoencoder (weights and latent normalisation) in `model`, frozen."""
    model.vae.load_state_dict(source.vae.state_dict())
    shift, scale = source.vae.config.shift_factor, source.vae.config.scaling_factor
    model.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    model.config.vae_config.update(shift_factor=shift, scaling_factor=scale)
    model.vae.eval().requires_grad_(False)


def train_vae(model: BagelModel, steps: int, seed: int, batch: int = 16, lr: float = 1e-3) -> dict[str, float]:
    """Train the autoencoder alone on renders (30% degraded), then fix its latent normalisation from the latents of
    256 renders (BAGEL normalises z = scale * (z - shift)). Returns the last loss, the shift and the scale."""
    rng = random.Random(f"vae/{seed}")
    vae = model.vae
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    loss = torch.zeros(())
    for step in (progress := tqdm(range(steps), desc="VAE", unit="step")):
        scenes = render_scenes(
            [random_train_spec(rng) for _ in range(batch)], rng, model.config.vae_min_image_size, 0.3
        )
        pixels = pixels_of([scene.image for scene in scenes]).to(vae.device)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / pixels[0].numel()
        loss = F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels) + 1e-4 * kl
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval().requires_grad_(False)
    scenes = render_scenes([random_train_spec(rng) for _ in range(256)], rng, model.config.vae_min_image_size, 0.0)
    with torch.no_grad():
        latents = vae.encode(pixels_of([scene.image for scene in scenes]).to(vae.device)).latent_dist.mean
    shift, scale = latents.mean().item(), 1.0 / latents.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    model.config.vae_config.update(shift_factor=shift, scaling_factor=scale)
    return {"vae_final_loss": loss.item(), "latent_shift": shift, "latent_scale": scale}


@torch.no_grad()
def match_connector_scale(model: BagelModel, pixels: torch.Tensor) -> float:
    """Rescale the connector's output layer so that image content is as loud as the sin-cos table it is added to.

    A freshly initialised connector at width 128 gives image tokens that are ~99% position table: the understanding
    expert then sees where a patch is, hardly what it shows (docs/results.md). `pixels` are a few renders
    `(B, 3, H, W)` in [-1, 1]. Returns the factor applied.
    """
    features, positions = vit_features(model, pixels)
    content = model.connector(features)
    table = model.vit_pos_embed(positions)
    factor = (table.pow(2).mean().sqrt() / content.pow(2).mean().sqrt()).item()
    model.connector.fc2.weight.mul_(factor)
    model.connector.fc2.bias.mul_(factor)
    return factor


def select_trainable(model: BagelModel, side: str) -> None:
    """Let `side` ("all", "understanding" or "generation") learn; the VAE never does here."""
    if side not in ("all", "understanding", "generation"):
        raise ValueError(f"side must be 'all', 'understanding' or 'generation', got {side!r}")
    generation_side = set(model.generation_parameter_names())
    for name, parameter in model.named_parameters():
        understanding = name.startswith(("vit_model.", "connector.", "language_model.lm_head.")) or (
            name.startswith("language_model.model.layers.") and name not in generation_side
        )
        trainable = {"all": True, "understanding": understanding, "generation": name in generation_side}[side]
        parameter.requires_grad_(trainable and not name.startswith("vae."))


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class PretrainConfig:
    """One pretraining run (see `recipes/shapes/pretrain.py` for the meaning of each field)."""

    steps: int = 8000
    steps_per_chunk: int = 500
    seed: int = 0
    lr: float = 1e-3
    warmup: int = 200
    decay_steps: int = 0
    ema: float = 0.999
    generation_batch: int = 32
    understanding_batch: int = 12
    understanding_weight: float = 1.0
    row_budget: int = 192
    text_dropout: float = 0.1
    # > 1 trains more at high noise, where the layout (which objects, how many, where) is decided.
    timestep_shift: float = 1.0
    degrade: float = 0.3
    own_from: int = 0  # step after which chunks add the model's own samples (0: from the first chunk)
    own_samples: int = 256  # own samples drawn per chunk
    own_fraction: float = 0.5  # of understanding rows that are own samples, when there are some
    train: str = "all"
    bank_size: int = 48000
    image_size: int = 64
    compile: bool = False  # torch.compile the two objectives (a few minutes once, then ~1.5-2x faster on a CPU)
    bf16: bool = False  # bf16 autocast for the linear layers (attention stays float32)
    sampling: dict[str, Any] = field(default_factory=lambda: dict(PRETRAINING_SAMPLING))
    mix: WorldMix = field(default_factory=WorldMix)

    def __post_init__(self) -> None:
        if isinstance(self.mix, dict):
            self.mix = WorldMix(**self.mix)
        if self.steps_per_chunk < 1 or self.steps < 0:
            raise ValueError(f"need steps >= 0 and steps_per_chunk >= 1, got {self.steps} and {self.steps_per_chunk}")
        if not self.generation_batch and not self.understanding_batch:
            raise ValueError("generation_batch and understanding_batch are both 0: a step would train nothing")


@dataclass
class TrainingState:
    """Everything a chunk boundary must keep for the next chunk to continue exactly."""

    step: int
    average: list[torch.Tensor]  # the weight average that is evaluated and saved, one per trainable parameter
    optimizer: dict[str, Any]
    history: list[dict[str, float]]


def _learning_rate(config: PretrainConfig, step: int) -> float:
    # A linear warm-up, then constant, then a cosine to zero over the last `decay_steps`: a run can be extended (or
    # its decay started) without changing the steps it has already taken.
    rate = config.lr * min(1.0, (step + 1) / max(1, config.warmup))
    decay_from = config.steps - config.decay_steps
    if config.decay_steps and step >= decay_from:
        rate *= 0.5 * (1 + math.cos(math.pi * (step - decay_from) / config.decay_steps))
    return rate


@contextlib.contextmanager
def averaged_weights(parameters: list[torch.Tensor], average: list[torch.Tensor]) -> Iterator[None]:
    """Use the averaged weights inside the block, then go back to the trained ones."""
    trained = [p.detach().clone() for p in parameters]
    with torch.no_grad():
        torch._foreach_copy_(parameters, average)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(parameters, trained)


def chunk_rows(
    model: BagelModel, config: PretrainConfig, chunk: int, steps: int, parameters: list, average: list
) -> UnderstandingRows:
    """The understanding rows a chunk trains on, drawn from (seed, chunk) and, for own samples, the averaged model."""
    rng = random.Random(f"understanding/{config.seed}/{chunk}")
    count = steps * config.understanding_batch
    own: list[Scene] = []
    if config.own_samples and chunk * config.steps_per_chunk >= config.own_from:
        with averaged_weights(parameters, average):
            own = own_scenes(model, config.own_samples, rng, config.image_size, config.sampling)
    num_own = min(int(config.own_fraction * count), 4 * len(own)) if own else 0
    specs = [random_train_spec(rng) for _ in range(count - num_own)]
    scenes = render_scenes(specs, rng, config.image_size, config.degrade)
    scenes += [own[rng.randrange(len(own))] for _ in range(num_own)]
    rng.shuffle(scenes)
    return understanding_rows(model, scenes, rng, config.image_size, config.row_budget)


def restore(
    model: BagelModel, optimizer: torch.optim.Optimizer, config: PretrainConfig, state_path: Path
) -> TrainingState:
    """The state saved at `state_path` loaded into `model` and `optimizer`, or a fresh one when there is none."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not state_path.is_file():
        return TrainingState(0, [p.detach().clone() for p in parameters], optimizer.state_dict(), [])
    saved = torch.load(state_path, weights_only=False)
    # Only the length of a run and its final decay may change between its invocations.
    wanted = asdict(config)
    changed = sorted(k for k in wanted if k not in ("steps", "decay_steps") and saved["config"].get(k) != wanted[k])
    if changed:
        raise ValueError(f"{state_path} was written by a run with other settings ({changed}); use a new folder")
    model.load_state_dict(saved["model"], strict=False)
    optimizer.load_state_dict(saved["state"]["optimizer"])
    return TrainingState(**{**saved["state"], "optimizer": optimizer.state_dict()})


def train(
    model: BagelModel,
    bank: GenerationBank | None,
    config: PretrainConfig,
    state_dir: Path,
    export: Callable[[BagelModel, TrainingState], None] | None = None,
) -> TrainingState:
    """Train (or resume) chunk by chunk; after each chunk the state is saved in `state_dir` and `export(model, state)`
    is called with the averaged weights in place. Returns the final state, the averaged weights left in the model."""
    if config.generation_batch and bank is None:
        raise ValueError("generation_batch > 0 needs a generation bank")
    select_trainable(model, config.train)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, betas=(0.9, 0.95), weight_decay=0.01)
    state_dir.mkdir(parents=True, exist_ok=True)
    state = restore(model, optimizer, config, state_dir / STATE_FILE)
    device = next(model.parameters()).device
    flow = torch.compile(flow_objective) if config.compile else flow_objective
    answers = torch.compile(answer_objective) if config.compile else answer_objective
    progress = tqdm(total=config.steps, initial=state.step, desc="pretraining", unit="step")
    while state.step < config.steps:
        chunk = state.step // config.steps_per_chunk
        steps = min(config.steps_per_chunk, config.steps - state.step)
        generator = torch.Generator().manual_seed(hash_seed("steps", config.seed, chunk))
        rows = None
        if config.understanding_batch:
            rows = chunk_rows(model, config, chunk, steps, parameters, state.average)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        for local in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, state.step)
            terms: dict[str, torch.Tensor] = {}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                if config.generation_batch:
                    index = torch.randint(len(bank), (config.generation_batch,), generator=generator)
                    batch = flow_batch(bank, index, generator, config.text_dropout, config.timestep_shift)
                    terms["generation_loss"] = flow(model, **{k: v.to(device) for k, v in batch.items()})
                if rows is not None:
                    size = config.understanding_batch
                    picked = rows.select(torch.arange(local * size, (local + 1) * size))
                    picked = UnderstandingRows(*(t.to(device) for t in asdict(picked).values()))
                    terms["understanding_loss"], terms["answer_token_accuracy"] = answers(model, picked)
            loss = sum(
                weight * terms[key]
                for key, weight in (("generation_loss", 1.0), ("understanding_loss", config.understanding_weight))
                if key in terms
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            # Averaging starts fast and settles at `ema`, so that early chunks' averages are not the initial weights.
            decay = min(config.ema, (1 + state.step) / (10 + state.step))
            with torch.no_grad():
                torch._foreach_lerp_(state.average, parameters, 1.0 - decay)
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().float()
            state.step += 1
            progress.update()
            if local % 20 == 19:
                progress.set_postfix({k: f"{v.item() / (local + 1):.3f}" for k, v in sums.items()})
        state.history.append({"step": state.step, **{k: v.item() / steps for k, v in sums.items()}})
        state.optimizer = optimizer.state_dict()
        save_state(model, state, config, state_dir / STATE_FILE)
        if export is not None:
            with averaged_weights(parameters, state.average):
                export(model, state)
    progress.close()
    with torch.no_grad():
        torch._foreach_copy_(parameters, state.average)
    return state


def hash_seed(*parts: Any) -> int:
    """A 63-bit seed from its parts, the same on every machine (unlike `hash`)."""
    return random.Random("/".join(map(str, parts))).randrange(2**63)


def save_state(model: BagelModel, state: TrainingState, config: PretrainConfig, path: Path) -> None:
    """Write the state next to a temporary name first, so that a run killed while saving keeps the previous one."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    temporary = path.with_suffix(".tmp")
    torch.save(
        {"config": asdict(config), "model": {k: v.detach() for k, v in trainable.items()}, "state": asdict(state)},
        temporary,
    )
    temporary.replace(path)
