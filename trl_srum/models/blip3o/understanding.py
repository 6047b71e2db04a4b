"""BLIP3o's understanding side, which is plain Qwen2.5-VL: free-text answers, answer scoring and grounding.

BLIP3o never trains its backbone, so these functions only need the `Qwen2_5_VLForConditionalGeneration` and its
processor; [`Blip3oModel`] forwards its protocol methods here.
"""

import re
from collections.abc import Sequence

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from ...protocol import Box


GROUNDING_QUESTION = 'Locate every "{phrase}" in the image and output the bbox coordinates in JSON format.'
# Qwen2.5-VL answers grounding questions with JSON objects like {"bbox_2d": [x1, y1, x2, y2], "label": "..."}; a
# regex instead of a JSON parser also reads answers that were cut off by max_new_tokens
_BBOX_PATTERN = re.compile(r'"bbox_2d"\s*:\s*\[([^\[\]]*)\]')
# stands in for a question while the chat template is split into the shared prefix and the per-question part
_QUESTION_MARKER = "\N{OBJECT REPLACEMENT CHARACTER}"


def chat_prompt(processor: Qwen2_5_VLProcessor, text: str, *, with_image: bool) -> str:
    """One user turn (an image, then `text`) in the processor's chat template, ready for the assistant's answer."""
    content = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": text})
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


@torch.no_grad()
def answer_questions(
    backbone: Qwen2_5_VLForConditionalGeneration,
    processor: Qwen2_5_VLProcessor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    *,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    generators: Sequence[torch.Generator] | None = None,
) -> list[str]:
    """Answer `questions[i]` about `images[i]`; with `do_sample` and `generators`, answer `i` samples from
    `generators[i]` only (the questions then run one at a time)."""
    if len(images) != len(questions):
        raise ValueError(f"Got {len(images)} images for {len(questions)} questions; pass one image per question.")
    if generators is not None and len(generators) != len(questions):
        raise ValueError(f"Got {len(generators)} generators for {len(questions)} questions; pass one per question.")
    sampling_kwargs = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
    if not (do_sample and generators is not None):
        return _generate(backbone, processor, images, questions, max_new_tokens, sampling_kwargs)

    answers = []
    for image, question, generator in zip(images, questions, generators):
        # transformers' sampling draws from the global RNG; seed it from this question's generator, in a fork so
        # that the caller's global RNG state is left untouched
        seed = int(torch.randint(2**63 - 1, (1,), generator=generator, device=generator.device))
        devices = [backbone.device] if backbone.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            answers += _generate(backbone, processor, [image], [question], max_new_tokens, sampling_kwargs)
    return answers


def _generate(
    backbone: Qwen2_5_VLForConditionalGeneration,
    processor: Qwen2_5_VLProcessor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    max_new_tokens: int,
    sampling_kwargs: dict,
) -> list[str]:
    texts = [chat_prompt(processor, question, with_image=True) for question in questions]
    inputs = processor(text=texts, images=list(images), padding=True, padding_side="left", return_tensors="pt").to(
        backbone.device
    )
    sequences = backbone.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        pad_token_id=processor.tokenizer.pad_token_id,
        **sampling_kwargs,
    )
    new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
    return [answer.strip() for answer in processor.batch_decode(new_tokens, skip_special_tokens=True)]


@torch.no_grad()
def score_answers(
    backbone: Qwen2_5_VLForConditionalGeneration,
    processor: Qwen2_5_VLProcessor,
    image: Image.Image,
    questions: Sequence[str],
    answers: Sequence[str],
) -> torch.Tensor:
    """`log p(answers[a] | image, questions[q])` summed over the answer's tokens, as a `(len(questions),
    len(answers))` float32 tensor on the CPU.

    The chat-template prefix up to and including the image is encoded once; its key/value cache is then shared by one
    batched forward over every (question, answer) continuation.
    """
    prompt = chat_prompt(processor, _QUESTION_MARKER, with_image=True)
    prefix_text, suffix_text = prompt.split(_QUESTION_MARKER)
    device = backbone.device

    # 1. the shared prefix, with Qwen2.5-VL's 3D positions for the image tokens
    prefix = processor(text=[prefix_text], images=[image], return_tensors="pt").to(device)
    position_ids, _ = backbone.model.get_rope_index(
        prefix["input_ids"],
        prefix["mm_token_type_ids"],
        image_grid_thw=prefix["image_grid_thw"],
        attention_mask=prefix["attention_mask"],
    )
    cache = backbone.model(**prefix, position_ids=position_ids, use_cache=True).past_key_values

    # 2. every (question, answer) continuation, right-padded; answer tokens are tokenised on their own so that the
    # scored tokens are exactly the answer's
    tokenizer = processor.tokenizer
    rows, answer_starts, answer_ids = [], [], []
    for question in questions:
        question_ids = tokenizer(question + suffix_text, add_special_tokens=False)["input_ids"]
        for answer in answers:
            ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            rows.append(question_ids + ids)
            answer_starts.append(len(question_ids))
            answer_ids.append(ids)
    batch_size, prefix_length = len(rows), prefix["input_ids"].shape[1]
    input_ids = pad_sequence(
        [torch.tensor(row) for row in rows], batch_first=True, padding_value=tokenizer.pad_token_id
    )
    length = input_ids.shape[1]
    continuation_mask = torch.arange(length) < torch.tensor([len(row) for row in rows])[:, None]
    attention_mask = torch.cat([torch.ones(batch_size, prefix_length, dtype=torch.long), continuation_mask.long()], 1)
    # text after the image continues from the largest position the prefix used, on all three M-RoPE axes
    positions = position_ids.max() + 1 + torch.arange(length, device=device)
    cache.batch_repeat_interleave(batch_size)
    hidden_states = backbone.model.language_model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=positions.view(1, 1, -1).expand(3, batch_size, -1),
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state

    # 3. token k of an answer is predicted by the hidden state just before it
    row_index = torch.tensor([row for row, ids in enumerate(answer_ids) for _ in ids], dtype=torch.long)
    position_index = torch.tensor(
        [start - 1 + k for start, ids in zip(answer_starts, answer_ids) for k in range(len(ids))], dtype=torch.long
    )
    targets = torch.tensor([token for ids in answer_ids for token in ids], dtype=torch.long)
    logits = backbone.lm_head(hidden_states[row_index.to(device), position_index.to(device)]).float().cpu()
    token_log_probs = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    scores = torch.zeros(batch_size).index_add_(0, row_index, token_log_probs)
    return scores.view(len(questions), len(answers))


def parse_grounding_boxes(text: str, *, image_size: tuple[int, int], processed_size: tuple[int, int]) -> list[Box]:
    """Read Qwen2.5-VL's `bbox_2d` boxes from an answer and map them to the image's own pixels.

    Qwen2.5-VL answers in absolute pixels of the image *as the processor resized it*, so coordinates are rescaled by
    `image_size / processed_size`. Boxes that stick out of the image are clipped to it (the model often overshoots an
    edge by a few pixels); boxes left empty by clipping, and entries that are not four numbers, are dropped.

    Args:
        text (`str`): the model's answer.
        image_size (`tuple[int, int]`): `(width, height)` of the image the boxes must refer to.
        processed_size (`tuple[int, int]`): `(width, height)` of the image the model saw.
    """
    width, height = image_size
    scale_x, scale_y = width / processed_size[0], height / processed_size[1]
    boxes = []
    for match in _BBOX_PATTERN.finditer(text):
        try:
            coordinates = [float(value) for value in match.group(1).split(",")]
        except ValueError:
            continue
        if len(coordinates) != 4:
            continue
        x1, y1, x2, y2 = coordinates
        x1, x2 = (min(max(x * scale_x, 0.0), width) for x in (x1, x2))
        y1, y2 = (min(max(y * scale_y, 0.0), height) for y in (y1, y2))
        if x2 > x1 and y2 > y1:
            boxes.append((x1, y1, x2, y2))
    return boxes


@torch.no_grad()
def ground(
    backbone: Qwen2_5_VLForConditionalGeneration,
    processor: Qwen2_5_VLProcessor,
    image: Image.Image,
    phrases: Sequence[str],
    *,
    max_new_tokens: int = 512,
) -> list[list[Box]]:
    """Boxes of every instance of each phrase, in `image`'s pixels, from Qwen2.5-VL's native JSON grounding."""
    grid_thw = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    patch_size = processor.image_processor.patch_size
    processed_size = (int(grid_thw[2]) * patch_size, int(grid_thw[1]) * patch_size)
    questions = [GROUNDING_QUESTION.format(phrase=phrase) for phrase in phrases]
    texts = answer_questions(backbone, processor, [image] * len(phrases), questions, max_new_tokens=max_new_tokens)
    return [parse_grounding_boxes(text, image_size=image.size, processed_size=processed_size) for text in texts]
