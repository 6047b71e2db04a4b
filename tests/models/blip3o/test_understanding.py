import numpy as np
import pytest
import torch
from PIL import Image

from trl_srum.models.blip3o.understanding import chat_prompt, parse_grounding_boxes


def tiny_image(seed: int = 0, size: tuple[int, int] = (90, 70)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@torch.no_grad()
def test_score_answers_equals_full_sequence_log_probabilities(tiny_model):
    image, questions, answers = tiny_image(), ["Is there a cat?", "What colour is it?"], ["yes", "no", "dark red"]
    scores = tiny_model.score_answers(image, questions, answers)
    assert scores.shape == (2, 3) and scores.dtype == torch.float32

    # reference: one uncached forward over the whole conversation, Qwen2.5-VL computing its own 3D positions
    processor, backbone = tiny_model.processor, tiny_model.backbone
    for q, question in enumerate(questions):
        prompt = chat_prompt(processor, question, with_image=True)
        for a, answer in enumerate(answers):
            inputs = processor(text=[prompt + answer], images=[image], return_tensors="pt")
            answer_length = len(processor.tokenizer(answer, add_special_tokens=False)["input_ids"])
            log_probs = backbone(**inputs).logits[0, -answer_length - 1 : -1].log_softmax(-1)
            expected = log_probs.gather(-1, inputs["input_ids"][0, -answer_length:, None]).sum()
            torch.testing.assert_close(scores[q, a], expected, rtol=0, atol=1e-4)


@torch.no_grad()
def test_answers_sample_from_their_own_generators(tiny_model):
    images, questions = [tiny_image(0), tiny_image(1)], ["Describe the image.", "What is here?"]
    settings = {"max_new_tokens": 4, "do_sample": True, "temperature": 1.0}
    batched = tiny_model.answer_questions(
        images, questions, generators=[torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)], **settings
    )
    alone = tiny_model.answer_questions(
        images[1:], questions[1:], generators=[torch.Generator().manual_seed(4)], **settings
    )
    assert all(isinstance(answer, str) for answer in batched) and alone[0] == batched[1]
    greedy = tiny_model.answer_questions(images, questions, max_new_tokens=4)
    assert greedy == tiny_model.answer_questions(images, questions, max_new_tokens=4)
    with pytest.raises(ValueError, match="one image per question"):
        tiny_model.answer_questions(images[:1], questions)


def test_grounding_boxes_are_rescaled_and_clipped():
    text = (
        '```json\n[{"bbox_2d": [14, 28, 42, 56], "label": "cat"}, {"bbox_2d": [-10, 20, 70, 40], "label": "dog"},'
        ' {"bbox_2d": [60, 60, 80, 90]}, {"bbox_2d": [1, 2, 3]}, {"bbox_2d": ["a", 1, 2, 3]}, {"bbox_2d": [5, 5, 1, 9'
    )
    boxes = parse_grounding_boxes(text, image_size=(112, 200), processed_size=(56, 100))
    # both axes scale by 2; the second box is clipped to the image, the third is empty once clipped, and malformed
    # or cut-off entries are skipped
    assert boxes == [(28.0, 56.0, 84.0, 112.0), (0.0, 40.0, 112.0, 80.0)]
    assert parse_grounding_boxes("no boxes here", image_size=(10, 10), processed_size=(10, 10)) == []


@torch.no_grad()
def test_ground_returns_boxes_inside_the_image(tiny_model):
    image = tiny_image(2, size=(120, 80))
    boxes = tiny_model.ground(image, ["cat", "red ball"], max_new_tokens=16)
    assert len(boxes) == 2
    for phrase_boxes in boxes:
        for x1, y1, x2, y2 in phrase_boxes:
            assert 0 <= x1 < x2 <= 120 and 0 <= y1 < y2 <= 80
