"""The contract between SRUM and a unified multimodal model.

SRUM needs the same network in two roles: a *generator* that draws images with a flow-matching head, and a *judge*
that looks at those images and answers questions about them. Stage 1 (rollouts) drives both roles at inference time;
stage 2 (`SRUMTrainer`) only drives the flow forward. Any model that implements `UnifiedModel` can be post-trained
with SRUM; see docs/adapters.md for the full description and a walk-through.

Conventions shared by every implementation:

- **Latents are token sequences.** A latent image is a `(rows * cols, latent_dim)` tensor in row-major token order,
  in the space the flow is trained in (for BAGEL: normalised VAE latents patchified 2x2; for BLIP3o: CLIP features).
- **Flow convention.** `x_t = (1 - t) * x_0 + t * noise` with `t = 1` pure noise and `t = 0` data; the network predicts
  the velocity `noise - x_0`.
- **Boxes** are `(x1, y1, x2, y2)` in pixels of the image that is trained on, end-exclusive.
- **Image sizes** are `(width, height)`; latent grids are `(rows, cols)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image


Box = tuple[float, float, float, float]


@dataclass
class GeneratedImage:
    """One image drawn by the generator, with everything stage 2 needs to train on it."""

    image: Image.Image = field(metadata={"help": "The decoded image."})
    latents: torch.Tensor = field(
        metadata={"help": "The generator's own final latent, shape (rows * cols, latent_dim), on the CPU."}
    )
    grid: tuple[int, int] = field(metadata={"help": "The latent token grid (rows, cols)."})
    reasoning: str | None = field(default=None, metadata={"help": "The think-mode planning text, if any."})


@dataclass
class FlowOutput:
    """What the training forward returns."""

    velocity: torch.Tensor = field(
        metadata={
            "help": "Predicted velocity of every noisy latent token, shape (total_tokens, latent_dim), "
            "packed in the order of the samples given to `prepare_flow_inputs`."
        }
    )


@runtime_checkable
class UnifiedModel(Protocol):
    """A unified understanding + generation model that SRUM can drive.

    The training path is `prepare_flow_inputs` followed by the module's own `forward`, so that the call goes through
    DDP/FSDP wrappers and PEFT adapters like any other forward. Everything else is inference and is called on the
    unwrapped model under `torch.no_grad()`.
    """

    # ------------------------------------------------------------------ training
    def prepare_flow_inputs(
        self,
        prompts: Sequence[str | None],
        noisy_latents: Sequence[torch.Tensor],
        grids: Sequence[tuple[int, int]],
        timesteps: torch.Tensor,
    ) -> dict[str, Any]:
        """Pack a batch for the flow forward.

        Args:
            prompts: one prompt per sample; `None` drops the text condition (classifier-free-guidance dropout).
            noisy_latents: `x_t` of each sample, shape (rows * cols, latent_dim).
            grids: the (rows, cols) token grid of each sample.
            timesteps: shape (num_samples,), the flow time of each sample in [0, 1].

        Returns:
            Keyword arguments for `forward`, already on the model's device.
        """
        ...

    def forward(self, **flow_inputs: Any) -> FlowOutput:
        """Predict the velocity of every noisy latent token (see `FlowOutput`)."""
        ...

    def generation_parameter_names(self) -> list[str]:
        """Names (as in `named_parameters()`) of the parameters that only the generation path uses.

        These are the parameters SRUM trains when the understanding side is frozen, so that the judge cannot drift.
        """
        ...

    @property
    def generation_lora_target_modules(self) -> str | list[str]:
        """A PEFT `target_modules` value that selects only generation-side linear layers."""
        ...

    # ------------------------------------------------------------------ generation
    def latent_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The (rows, cols) latent token grid of an image of `image_size` = (width, height) pixels.

        Raises `ValueError` (naming the size) when the model cannot generate or encode images of that size.
        """
        ...

    def generate_images(
        self,
        prompts: Sequence[str],
        *,
        generators: Sequence[torch.Generator],
        image_size: tuple[int, int],
        think: bool = False,
        **sampling_kwargs: Any,
    ) -> list[GeneratedImage]:
        """Draw one image per prompt; prompt `i` takes all of its randomness from `generators[i]`.

        `sampling_kwargs` are the model's own sampler settings (steps, guidance, ...), as in its recipe.
        """
        ...

    def encode_images(
        self, images: Sequence[Image.Image], *, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """Map images to latent tokens (rows * cols, latent_dim); `generator` samples the posterior when given,
        otherwise the posterior mean is used."""
        ...

    def decode_latents(self, latents: Sequence[torch.Tensor], grids: Sequence[tuple[int, int]]) -> list[Image.Image]:
        """Inverse of `encode_images` (up to the autoencoder's reconstruction error)."""
        ...

    # ------------------------------------------------------------------ understanding
    def answer_questions(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        *,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 1.0,
        generators: Sequence[torch.Generator] | None = None,
        think: bool = False,
    ) -> list[str]:
        """Answer `questions[i]` about `images[i]` as free text (greedy unless `do_sample`)."""
        ...

    def score_answers(self, image: Image.Image, questions: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """Log-probability of each candidate answer to each question about one image.

        Returns a (len(questions), len(answers)) tensor: entry (q, a) is log p(answers[a] | image, questions[q]),
        summed over the answer's tokens. The image prefix is encoded once and shared by every question.
        """
        ...

    @property
    def supports_grounding(self) -> bool:
        """Whether `ground` is implemented."""
        ...

    def ground(self, image: Image.Image, phrases: Sequence[str]) -> list[list[Box]]:
        """Boxes, in the image's own pixels, of every instance of each phrase (the model's native grounding)."""
        ...
