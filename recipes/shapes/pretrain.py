"""Pretrain the tiny shapes-world BAGEL that trl-srum ships: a VAE, then generation, then both together.

    python recipes/shapes/pretrain.py --output_dir /tmp/shapes_bagel --steps 500 --vae_steps 300   # a quick try

The model is the real BAGEL architecture (`trl_srum.models.bagel.BagelModel`, same classes as the 7B) at a tiny
size: a 4-layer Mixture-of-Transformers LLM, a 2-layer SigLIP ViT, a diffusers `AutoencoderKL`, and a word-level
tokenizer built with `tokenizers`. It learns

- understanding: the concise self-judge questions of `trl_srum.shapes.tasks` (layout match, layout score, region
  match / relevance / score, grounding) and plain VQA (exists, count, colour, relation) on renders, degraded renders
  and VAE reconstructions — labelled by the oracle, as human labels teach a real VLM;
- generation: flow matching on VAE latents of renders with their prompts (10% text dropout for CFG).

Only the training split of prompts is used; held-out combinations are never seen. Each run ends by measuring the gap
SRUM exists for on held-out prompts (judging vs drawing) and writes it to `<output_dir>/pretrain_report.json`.

The shipped model (`trl_srum/assets/shapes_bagel`) was built in four runs, each continuing the previous one (seed 0,
one CPU thread each; wall times in docs/results.md):

    python recipes/shapes/pretrain.py --output_dir runs/vae --steps 0 --threads 1
    python recipes/shapes/pretrain.py --output_dir runs/gen --vae_from runs/vae --steps 6000 \
        --understanding_batch 0 --generation_batch 32 --generation_every 1 --ema 0.999 --threads 1
    python recipes/shapes/pretrain.py --output_dir runs/joint --init_from runs/gen --steps 1400 \
        --understanding_batch 12 --generation_batch 32 --generation_every 1 --lr 3e-4 --ema 0 \
        --own_images_from 0.2 --threads 1
    python recipes/shapes/pretrain.py --output_dir trl_srum/assets/shapes_bagel --init_from runs/joint --steps 600 \
        --understanding_batch 12 --generation_batch 32 --generation_every 1 --lr 3e-4 --ema 0 --threads 1

That model's judge barely sees its images: its connector's output is ~7% as loud as the sin-cos position table it is
added to, and it answers the VQA questions with their most frequent answer (docs/results.md). For new runs, pass
`--match_connector_scale`; to retrain the judge of an existing model without touching its generation expert:

    python recipes/shapes/pretrain.py --output_dir runs/judge --init_from trl_srum/assets/shapes_bagel \
        --match_connector_scale --train understanding --own_images_from 0 --steps 1000 \
        --understanding_batch 12 --generation_batch 16 --generation_every 1 --lr 5e-4 --ema 0 --threads 1
"""

import argparse
import contextlib
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from trl_srum.flow import add_noise, sample_timesteps
from trl_srum.judge.prompts import concise_vocabulary
from trl_srum.models.bagel import BagelConfig, BagelModel
from trl_srum.models.bagel.conversion import special_token_ids_from_tokenizer
from trl_srum.models.bagel.image_processing import patchify, pil_to_tensor
from trl_srum.models.bagel.tiny import build_word_level_tokenizer
from trl_srum.shapes import CATEGORIES, alter, describe, detect, perturb, render, sample_specs, vocabulary
from trl_srum.shapes.evaluation import evaluation_specs, generation_accuracy, understanding_accuracy
from trl_srum.shapes.pretrained import DEFAULT_MODEL_DIR, SHAPES_IMAGE_SIZE, SHAPES_SAMPLING
from trl_srum.shapes.tasks import QUESTION_WORDS, scene_questions, shown_spec


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae_steps", type=int, default=2500)
    parser.add_argument("--vae_from", default=None, help="reuse the VAE of a model folder written by this script")
    parser.add_argument(
        "--init_from", default=None, help="continue from a whole model folder written by this script (VAE included)"
    )
    parser.add_argument("--steps", type=int, default=4000, help="joint understanding + generation steps")
    parser.add_argument("--understanding_batch", type=int, default=16, help="scenes per understanding step")
    parser.add_argument("--questions_per_scene", type=int, default=6, help="of the ten kinds, asked per scene")
    parser.add_argument("--generation_batch", type=int, default=16, help="images per generation step")
    parser.add_argument("--generation_every", type=int, default=2, help="a generation step every N steps")
    parser.add_argument("--latent_bank", type=int, default=6000, help="renders encoded once for generation")
    parser.add_argument(
        "--own_images_from",
        type=float,
        default=1.0,
        help="fraction of steps after which half the understanding scenes are the model's own samples, labelled by "
        "what the oracle reads in them (1: never)",
    )
    parser.add_argument(
        "--train",
        choices=["all", "understanding", "generation"],
        default="all",
        help="which side's parameters learn. understanding: the ViT, connector, LM head and the LLM's understanding "
        "expert (the generation loss still runs, so the prompt encoding the generation expert reads stays in place); "
        "generation: the generation expert and flow adapters only, so the judge is exactly unchanged",
    )
    parser.add_argument(
        "--match_connector_scale",
        action="store_true",
        help="rescale the connector before training so that images are not drowned by the position table (see "
        "`match_connector_scale`; the shipped model was trained without it)",
    )
    parser.add_argument("--eval_per_category", type=int, default=12)
    parser.add_argument(
        "--eval_every", type=int, default=0, help="print held-out accuracies every N steps (0: at the end)"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--ema", type=float, default=0.999, help="decay of the weight average that is evaluated and saved"
    )
    parser.add_argument("--llm_hidden", type=int, default=128)
    parser.add_argument("--llm_layers", type=int, default=4)
    parser.add_argument("--vit_hidden", type=int, default=64)
    parser.add_argument("--vit_layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--device",
        default="cpu",
        help="where to train (e.g. cuda); random draws stay on the CPU, so a seed gives the same data everywhere",
    )
    return parser.parse_args()


# ----------------------------------------------------------------------------------------------------- the model
def shapes_vocabulary() -> list[str]:
    return sorted(set(vocabulary()) | set(concise_vocabulary()) | set(QUESTION_WORDS))


def build_model(
    seed: int, llm_hidden: int = 128, llm_layers: int = 4, vit_hidden: int = 64, vit_layers: int = 2
) -> BagelModel:
    tokenizer = build_word_level_tokenizer(shapes_vocabulary())
    config = BagelConfig(
        llm_config={
            "vocab_size": len(tokenizer),
            "hidden_size": llm_hidden,
            "intermediate_size": llm_hidden * 5 // 2,
            "num_hidden_layers": llm_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        vit_config={
            "hidden_size": vit_hidden,
            "intermediate_size": vit_hidden * 2,
            "num_hidden_layers": vit_layers,
            "num_attention_heads": 2,
            "image_size": SHAPES_IMAGE_SIZE,
            "patch_size": 8,
            "vision_use_head": False,
        },
        vae_config={
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [16, 32, 64],
            "layers_per_block": 1,
            # Flat-coloured 64x64 scenes need no mid-block attention, and on a CPU it costs most of the VAE's time.
            "mid_block_add_attention": False,
            "latent_channels": 4,
            "norm_num_groups": 16,
            "scaling_factor": 1.0,
            "shift_factor": 0.0,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        },
        max_latent_size=SHAPES_IMAGE_SIZE // 8,
        vit_max_num_patch_per_side=SHAPES_IMAGE_SIZE // 8,
        vae_min_image_size=SHAPES_IMAGE_SIZE,
        vit_min_image_size=SHAPES_IMAGE_SIZE,
        supports_grounding=True,
        prompt_style="concise",
        **special_token_ids_from_tokenizer(tokenizer),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BagelModel(config)
    model.tokenizer = tokenizer
    return model


@torch.no_grad()
def match_connector_scale(model: BagelModel, rng: random.Random, num_images: int = 16) -> float:
    """Rescale the connector's output layer so image content is as loud as the sin-cos position table it is added to.

    At the 7B's width a pretrained connector is loud enough, but a freshly initialised one at width 128 gives image
    tokens that are ~99% position table: the understanding expert then sees where a patch is, hardly what it shows,
    and learns only about one bit of colour (warm vs cool) in hundreds of steps. Returns the factor applied.
    """
    images = [
        render(random_train_spec(rng), size=SHAPES_IMAGE_SIZE, seed=rng.randrange(2**31)) for _ in range(num_images)
    ]
    tokens = torch.cat(model.embed_images_for_understanding([model.understanding_pixels(im) for im in images]))
    grid = model.config.vit_max_num_patch_per_side
    positions = model.vit_pos_embed(torch.arange(grid * grid, device=tokens.device))
    content = tokens - positions.repeat(num_images, 1)
    factor = (positions.pow(2).mean().sqrt() / content.pow(2).mean().sqrt()).item()
    model.connector.fc2.weight.mul_(factor)
    model.connector.fc2.bias.mul_(factor)
    return factor


# ------------------------------------------------------------------------------------------------------ the data
def random_train_spec(rng: random.Random) -> dict:
    category = rng.choice(CATEGORIES)
    return sample_specs(category, 1, rng.randrange(2**31), split="train")[0]


def pixels_of(images) -> torch.Tensor:
    return torch.stack([pil_to_tensor(image) for image in images])


@dataclass
class Scene:
    image: object  # PIL image
    spec: dict  # what the image was drawn from


class OwnImages:
    """A rolling buffer of the model's own samples, so that the judge also learns to read generated images."""

    def __init__(self, capacity: int = 512):
        self.scenes: list[Scene] = []
        self.capacity = capacity

    def refresh(self, model: BagelModel, rng: random.Random, count: int) -> None:
        specs = [random_train_spec(rng) for _ in range(count)]
        model.eval()
        with torch.no_grad():
            generated = model.generate_images(
                [describe(spec) for spec in specs],
                generators=[torch.Generator().manual_seed(rng.randrange(2**31)) for _ in specs],
                image_size=(SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE),
                **SHAPES_SAMPLING,
            )
        model.train()
        # Labelled by what each image shows, not by its prompt: a weak generator's samples nearly all miss their
        # prompts, and asked about the prompt the judge learns to answer "no" to everything.
        np_rng = np.random.default_rng(rng.randrange(2**31))
        shown = [shown_spec(detect(g.image), np_rng) for g in generated]
        fresh = [Scene(g.image, spec) for g, spec in zip(generated, shown) if spec is not None]
        self.scenes = (self.scenes + fresh)[-self.capacity :]


def understanding_scene(rng: random.Random, model: BagelModel, own: OwnImages, use_own: bool) -> Scene:
    """An image to ask about: the model's own sample, a degraded render, a VAE reconstruction, or a clean render."""
    if use_own and own.scenes and rng.random() < 0.5:
        return rng.choice(own.scenes)
    spec = random_train_spec(rng)
    image = render(spec, size=SHAPES_IMAGE_SIZE, seed=rng.randrange(2**31))
    roll = rng.random()
    if roll < 0.4:
        image = perturb(image, seed=rng.randrange(2**31), strength=rng.uniform(0.3, 1.5))
    elif roll < 0.6:
        with torch.no_grad():
            grid = model.latent_grid(image.size)
            image = model.decode_latents([model.encode_pixels(pil_to_tensor(image))], [grid])[0]
    return Scene(image, spec)


def asked_spec(scene: Scene, rng: random.Random) -> dict:
    """Ask about the drawn spec half of the time, otherwise about a nearby wrong one (a hard negative)."""
    if rng.random() < 0.5:
        return scene.spec
    kinds = ["color", "shape", "count", "swap_colors", "relation", "missing", "extra"]
    rng.shuffle(kinds)
    for kind in kinds:
        wrong = alter(scene.spec, kind, rng.randrange(2**31))
        if wrong is not None:
            return wrong
    return random_train_spec(rng)


# ------------------------------------------------------------------------------------------------------ the losses
def understanding_loss(
    model: BagelModel, scenes: list[Scene], rng: random.Random, questions_per_scene: int
) -> tuple[torch.Tensor, float]:
    """Next-token loss on the answers, exactly as `answer_questions` reads them: [image] [question] [<im_start> answer]."""
    cache = model.prefill_images(model.new_cache(len(scenes)), [model.understanding_pixels(s.image) for s in scenes])
    rows, texts, answer_spans = [], [], []
    np_rng = np.random.default_rng(rng.randrange(2**31))
    for row, scene in enumerate(scenes):
        reading = detect(scene.image)
        labelled_questions = scene_questions(reading, asked_spec(scene, rng), SHAPES_IMAGE_SIZE, np_rng)
        for labelled in rng.sample(labelled_questions, min(questions_per_scene, len(labelled_questions))):
            question = model.wrap_text(model.tokenize([labelled.question])[0])
            answer = model.tokenize([labelled.answer])[0] + [model.config.im_end_token_id]
            rows.append(row)
            texts.append(question + [model.config.im_start_token_id] + answer)
            answer_spans.append((len(question), answer))
    logits = model.forward_text(cache, texts, cache_rows=rows, output_logits=True).logits
    # The logit at <im_start> predicts the answer's first token, and so on to <im_end>.
    predicted = torch.cat([lg[start : start + len(answer)] for lg, (start, answer) in zip(logits, answer_spans)])
    targets = torch.tensor([token for _, answer in answer_spans for token in answer], device=predicted.device)
    loss = F.cross_entropy(predicted.float(), targets)
    accuracy = (predicted.argmax(-1) == targets).float().mean().item()
    return loss, accuracy


class LatentBank:
    """Renders of training prompts, encoded once: generation steps then cost only the transformer."""

    def __init__(self, model: BagelModel, rng: random.Random, size: int, batch: int = 64):
        self.prompts: list[str] = []
        self.latents: list[torch.Tensor] = []
        vae = model.vae
        for _ in tqdm(range(0, size, batch), desc="encoding renders for generation"):
            specs = [random_train_spec(rng) for _ in range(batch)]
            images = [render(spec, size=SHAPES_IMAGE_SIZE, seed=rng.randrange(2**31)) for spec in specs]
            with torch.no_grad():
                latent = vae.encode(pixels_of(images).to(vae.device)).latent_dist.mean
                latent = vae.config.scaling_factor * (latent - vae.config.shift_factor)
            self.latents += [patchify(z, model.config.latent_patch_size) for z in latent]
            self.prompts += [describe(spec) for spec in specs]

    def sample(self, rng: random.Random, batch: int) -> tuple[list[str], list[torch.Tensor]]:
        picks = [rng.randrange(len(self.latents)) for _ in range(batch)]
        return [self.prompts[i] for i in picks], [self.latents[i] for i in picks]


def generation_loss(
    model: BagelModel, bank: LatentBank, rng: random.Random, batch: int, generator: torch.Generator
) -> torch.Tensor:
    prompts, latents = bank.sample(rng, batch)
    grid = model.latent_grid((SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE))
    device = latents[0].device
    t = sample_timesteps(batch, generator=generator).to(device)
    noise = [torch.randn(x.shape, generator=generator).to(device) for x in latents]
    noisy = [add_noise(x, n, ti) for x, n, ti in zip(latents, noise, t)]
    prompts = [None if rng.random() < 0.1 else prompt for prompt in prompts]
    velocity = model(**model.prepare_flow_inputs(prompts, noisy, [grid] * batch, t)).velocity
    return (velocity - (torch.cat(noise) - torch.cat(latents))).pow(2).mean()


# ------------------------------------------------------------------------------------------------------ training
def train_vae(model: BagelModel, steps: int, rng: random.Random) -> dict:
    """Train the autoencoder alone, then fix its latent scale and shift (BAGEL normalises z = scale * (z - shift))."""
    vae: AutoencoderKL = model.vae
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    progress = tqdm(range(steps), desc="VAE")
    for step in progress:
        specs = [random_train_spec(rng) for _ in range(16)]
        images = [render(s, size=SHAPES_IMAGE_SIZE, seed=rng.randrange(2**31)) for s in specs]
        images = [perturb(im, rng.randrange(2**31), 0.5) if rng.random() < 0.3 else im for im in images]
        pixels = pixels_of(images).to(vae.device)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / pixels[0].numel()
        loss = F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels) + 1e-4 * kl
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        images = [render(random_train_spec(rng), size=SHAPES_IMAGE_SIZE, seed=i) for i in range(256)]
        latents = vae.encode(pixels_of(images).to(vae.device)).latent_dist.mean
    shift, scale = latents.mean().item(), 1.0 / latents.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    model.config.vae_config.update(shift_factor=shift, scaling_factor=scale)
    return {"vae_final_loss": loss.item(), "latent_shift": shift, "latent_scale": scale}


def select_trainable(model: BagelModel, side: str) -> None:
    """Let `side` ("all", "understanding" or "generation") learn; the VAE never does here."""
    generation_side = set(model.generation_parameter_names())
    for name, parameter in model.named_parameters():
        understanding = name.startswith(("vit_model.", "connector.", "language_model.lm_head.")) or (
            name.startswith("language_model.model.layers.") and name not in generation_side
        )
        trainable = {"all": True, "understanding": understanding, "generation": name in generation_side}[side]
        parameter.requires_grad_(trainable and not name.startswith("vae."))


def train_joint(model: BagelModel, args: argparse.Namespace, rng: random.Random) -> dict:
    if not args.understanding_batch and args.generation_every != 1:
        raise ValueError(
            f"--understanding_batch 0 with --generation_every {args.generation_every} leaves steps with nothing to "
            "train: pass --generation_every 1"
        )
    model.train()
    select_trainable(model, args.train)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    # An exponential moving average of the weights draws much cleaner shapes than the last iterate (as in BAGEL's
    # own training); it is what gets evaluated and saved.
    average = [p.detach().clone() for p in parameters]
    generator = torch.Generator().manual_seed(args.seed)
    bank = LatentBank(model, rng, args.latent_bank)
    own = OwnImages()
    own_from = int(args.own_images_from * args.steps)
    warmup = max(1, min(200, args.steps // 10))
    history = {"understanding_loss": [], "understanding_token_accuracy": [], "generation_loss": []}
    progress = tqdm(range(args.steps), desc="BAGEL (understanding + generation)")
    for step in progress:
        for group in optimizer.param_groups:
            ramp = min(1.0, (step + 1) / warmup)
            group["lr"] = args.lr * ramp * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        if args.understanding_batch and step >= own_from and (step - own_from) % 100 == 0:
            own.refresh(model, rng, 32)
        loss = torch.zeros((), device=args.device)
        if args.understanding_batch:
            scenes = [understanding_scene(rng, model, own, step >= own_from) for _ in range(args.understanding_batch)]
            loss_u, token_accuracy = understanding_loss(model, scenes, rng, args.questions_per_scene)
            loss = loss + loss_u
            history["understanding_loss"].append(loss_u.item())
            history["understanding_token_accuracy"].append(token_accuracy)
        if args.generation_every and step % args.generation_every == 0:
            loss_g = generation_loss(model, bank, rng, args.generation_batch, generator)
            loss = loss + loss_g
            history["generation_loss"].append(loss_g.item())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(average, parameters, 1.0 - args.ema)
        if args.eval_every and (step + 1) % args.eval_every == 0:
            with averaged_weights(parameters, average):
                progress.write(f"step {step + 1}: {json.dumps(held_out_accuracies(model, args, quick=True))}")
            model.train()
        if step % 20 == 0:
            shown = {"und": "understanding_loss", "tok": "understanding_token_accuracy", "gen": "generation_loss"}
            progress.set_postfix({k: f"{np.mean(history[key][-20:]):.3f}" for k, key in shown.items() if history[key]})
    with torch.no_grad():
        torch._foreach_copy_(parameters, average)
    return {key: float(np.mean(values[-100:])) for key, values in history.items() if values}


@contextlib.contextmanager
def averaged_weights(parameters: list[torch.Tensor], average: list[torch.Tensor]) -> Iterator[None]:
    """Evaluate with the averaged weights, then go back to the trained ones."""
    trained = [p.detach().clone() for p in parameters]
    with torch.no_grad():
        torch._foreach_copy_(parameters, average)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(parameters, trained)


def held_out_accuracies(model: BagelModel, args: argparse.Namespace, quick: bool = False) -> dict:
    """The gap SRUM exists for: judging held-out scenes vs drawing held-out prompts."""
    model.eval()
    specs = evaluation_specs(4 if quick else args.eval_per_category, split="heldout")
    table, _ = generation_accuracy(model, specs, seeds=[0], image_size=SHAPES_IMAGE_SIZE, **SHAPES_SAMPLING)
    scenes = [spec for group in specs.values() for spec in group]
    return {
        "generation_accuracy": {k: round(v["accuracy"], 3) for k, v in table.items()},
        "understanding_accuracy": understanding_accuracy(model, scenes, image_size=SHAPES_IMAGE_SIZE),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    report = {"seed": args.seed, "args": vars(args)}
    if args.init_from:
        model = BagelModel.from_pretrained(args.init_from).to(args.device)
        model.vae.eval().requires_grad_(False)
    else:
        model = build_model(args.seed, args.llm_hidden, args.llm_layers, args.vit_hidden, args.vit_layers)
        model.to(args.device)
        if args.vae_from:
            trained = BagelModel.from_pretrained(args.vae_from)
            model.vae.load_state_dict(trained.vae.state_dict())
            shift, scale = trained.vae.config.shift_factor, trained.vae.config.scaling_factor
            model.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
            model.config.vae_config.update(shift_factor=shift, scaling_factor=scale)
            model.vae.eval().requires_grad_(False)
        else:
            report.update(train_vae(model, args.vae_steps, rng))
    report["vae_minutes"] = (time.perf_counter() - started) / 60
    if args.match_connector_scale:
        report["connector_scale"] = match_connector_scale(model, rng)
    if args.steps:
        report.update(train_joint(model, args, rng))
        report["train_minutes"] = (time.perf_counter() - started) / 60
        report.update(held_out_accuracies(model, args))
    report["total_minutes"] = (time.perf_counter() - started) / 60

    output = Path(args.output_dir)
    model.save_pretrained(output)
    (output / "pretrain_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "args"}, indent=2))


if __name__ == "__main__":
    main()
