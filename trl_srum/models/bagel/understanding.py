"""BAGEL's understanding side in words: how an image is prepared for the ViT, answers to questions about images,
answer scoring, and grounding. `BagelModel`'s protocol methods call these; they tokenise, run the model's chunk
primitives (prefill images and text into a KV cache, decode) and decode."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from PIL import Image

from ...prompt_text import grounding_prompt, parse_boxes
from ...protocol import Box
from . import generation
from .cache import KVCache
from .configuration_bagel import BagelConfig
from .image_processing import pil_to_tensor, resize_for_model


class BagelModel(generation.BagelModel, Protocol):
    """What these functions use of `modeling_bagel.BagelModel` beyond the generation primitives (typed here, as in
    `generation`, so that the model file and this one do not import each other)."""

    @property
    def supports_grounding(self) -> bool: ...
    def prefill_images(self, cache: KVCache, pixel_values: Sequence[torch.Tensor]) -> KVCache: ...
    def understanding_pixels(self, image: Image.Image) -> torch.Tensor: ...
    def answer_questions(
        self, images: Sequence[Image.Image], questions: Sequence[str], **kwargs: Any
    ) -> list[str]: ...


# The official inferencer's system prompt for answering with reasoning first.
VLM_THINK_SYSTEM_PROMPT = (
    "You should first think about the reasoning process in the mind and then provide the user with the answer. \n"
    "The reasoning process is enclosed within <think> </think> tags, i.e. <think> reasoning process here </think> "
    "answer here"
)


def understanding_pixels(config: BagelConfig, image: Image.Image) -> torch.Tensor:
    """The official understanding preprocessing: the VAE-side resize, then the ViT-side resize, to [-1, 1]."""
    image = resize_for_model(
        image.convert("RGB"),
        config.max_latent_size * config.latent_stride,
        config.vae_min_image_size,
        config.latent_stride,
    )
    patch_size = config.vit_config.patch_size
    image = resize_for_model(
        image, config.vit_max_num_patch_per_side * patch_size, config.vit_min_image_size, patch_size
    )
    return pil_to_tensor(image)


def _image_question_cache(
    model: BagelModel, images: Sequence[Image.Image], question_ids: Sequence[Sequence[int]], think: bool
) -> KVCache:
    cache = model.new_cache(len(images))
    if think:
        cache = model.prefill_text(cache, model.tokenize([VLM_THINK_SYSTEM_PROMPT]) * len(images)).cache
    cache = model.prefill_images(cache, [model.understanding_pixels(image) for image in images])
    return model.prefill_text(cache, question_ids).cache


def answer_questions(
    model: BagelModel,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    generators: Sequence[torch.Generator] | None = None,
    think: bool = False,
) -> list[str]:
    """Answer `questions[i]` about `images[i]`; with `think`, the VLM think system prompt comes first."""
    if len(images) != len(questions):
        raise ValueError(f"Got {len(images)} images for {len(questions)} questions; pass one image per question.")
    cache = _image_question_cache(model, images, model.tokenize(questions), think)
    output = generation.generate_text_ids(
        model,
        cache,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        generators=generators,
    )
    return model.require_tokenizer().batch_decode(output.token_ids, skip_special_tokens=True)


def score_answers(
    model: BagelModel, image: Image.Image, questions: Sequence[str], answers: Sequence[str]
) -> torch.Tensor:
    """`log p(answers[a] | image, questions[q])` summed over answer tokens, shape `(questions, answers)`.

    The image is prefilled once; then one forward runs every `(question, answer)` pair on top of it.
    """
    cache = model.prefill_images(model.new_cache(1), [model.understanding_pixels(image)])
    question_ids, answer_ids = model.tokenize(questions), model.tokenize(answers)
    empty = [answer for answer, ids in zip(answers, answer_ids, strict=True) if not ids]
    if empty:
        raise ValueError(f"Answers {empty} have no tokens to score.")
    return generation.score_answer_ids(model, cache, question_ids, answer_ids)


def ground(
    model: BagelModel, image: Image.Image, phrases: Sequence[str], *, max_new_tokens: int = 256
) -> list[list[Box]]:
    """Boxes of every instance of each phrase, parsed from the (greedy) answers to the grounding prompt."""
    if not model.supports_grounding:
        raise NotImplementedError(
            "BAGEL does not ground natively; set config.supports_grounding=True on a model trained to answer "
            "`trl_srum.prompt_text.grounding_prompt` with boxes."
        )
    style = model.config.prompt_style
    questions = [grounding_prompt(phrase, image.size, style=style) for phrase in phrases]
    answers = model.answer_questions([image] * len(phrases), questions, max_new_tokens=max_new_tokens)
    return [parse_boxes(answer, image.size) for answer in answers]
