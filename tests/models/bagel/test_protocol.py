import pytest
import torch
from PIL import Image

from trl_srum.models.bagel.tiny import tiny_bagel_model
from trl_srum.prompt_text import grounding_answer, parse_boxes
from trl_srum.protocol import GeneratedImage, UnifiedModel


def generators(*seeds):
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def test_bagel_implements_the_protocol(tiny_model):
    assert isinstance(tiny_model, UnifiedModel)
    assert tiny_model.latent_grid((24, 16)) == (4, 6)  # (width, height) -> (rows, cols)


@torch.no_grad()
def test_generate_images_draws_each_image_from_its_own_generator(tiny_model):
    prompts = ["a red circle", "two blue squares left of a big yellow star", "a triangle"]
    batch = tiny_model.generate_images(prompts, generators=generators(0, 1, 2), image_size=(12, 8), num_timesteps=4)
    assert all(isinstance(item, GeneratedImage) for item in batch)
    assert batch[0].image.size == (12, 8) and batch[0].grid == (2, 3)
    assert batch[0].latents.shape == (6, tiny_model.config.latent_dim) and batch[0].reasoning is None
    alone = tiny_model.generate_images(prompts[1:2], generators=generators(1), image_size=(12, 8), num_timesteps=4)
    torch.testing.assert_close(alone[0].latents, batch[1].latents, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch[0].latents, batch[2].latents)

    thought = tiny_model.generate_images(
        prompts[:1],
        generators=generators(0),
        image_size=(8, 8),
        think=True,
        max_think_tokens=4,
        num_timesteps=3,
        cfg_img_scale=1.5,
        cfg_renorm_type="text_channel",
    )
    assert isinstance(thought[0].reasoning, str)


@torch.no_grad()
def test_encode_and_decode_images(tiny_model):
    image = Image.new("RGB", (16, 8), (200, 30, 30))
    mean = tiny_model.encode_images([image])[0]
    assert mean.shape == (8, tiny_model.config.latent_dim)
    sampled = tiny_model.encode_images([image], generator=torch.Generator().manual_seed(0))[0]
    assert not torch.equal(sampled, mean)
    assert tiny_model.decode_latents([mean], [(2, 4)])[0].size == (16, 8)
    with pytest.raises(ValueError, match="multiples of 4"):
        tiny_model.encode_images([Image.new("RGB", (10, 8))])


@torch.no_grad()
def test_answer_questions_batched_and_sampled(tiny_model):
    images = [Image.new("RGB", (40, 30), (0, 0, 255)), Image.new("RGB", (20, 60), (255, 0, 0))]
    questions = ["what color is the image ?", "how many circles are there ?"]
    answers = tiny_model.answer_questions(images, questions, max_new_tokens=5)
    assert len(answers) == 2 and all(isinstance(answer, str) for answer in answers)
    assert tiny_model.answer_questions(images[1:], questions[1:], max_new_tokens=5) == answers[1:]
    sampled = tiny_model.answer_questions(
        images, questions, max_new_tokens=5, do_sample=True, temperature=0.7, generators=generators(3, 4), think=True
    )
    again = tiny_model.answer_questions(
        images[:1],
        questions[:1],
        max_new_tokens=5,
        do_sample=True,
        temperature=0.7,
        generators=generators(3),
        think=True,
    )
    assert again == sampled[:1]


@torch.no_grad()
def test_score_answers_is_the_log_probability_decoding_would_give(tiny_model):
    image = Image.new("RGB", (30, 30), (0, 255, 0))
    questions, answers = ["what color is it ?", "is it green ?"], ["green", "yes", "a red circle"]
    scores = tiny_model.score_answers(image, questions, answers)
    assert scores.shape == (2, 3) and torch.all(scores < 0)

    # The same log-probability, token by token, through the decoding path.
    pixels = tiny_model.understanding_pixels(image)
    cache = tiny_model.prefill_images(tiny_model.new_cache(1), [pixels])
    cache = tiny_model.prefill_text(cache, tiny_model.tokenize(questions[1:])).cache
    answer = tiny_model.tokenize(answers[2:])[0]
    logits = tiny_model.forward_text(
        cache, [[tiny_model.config.im_start_token_id, *answer]], output_logits=True
    ).logits[0]
    expected = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(answer)[:, None]).sum()
    torch.testing.assert_close(scores[1, 2], expected, atol=1e-5, rtol=1e-5)


def test_grounding_is_off_unless_configured_and_parses_boxes():
    model = tiny_bagel_model(seed=9)
    assert not model.supports_grounding
    with pytest.raises(NotImplementedError, match="supports_grounding"):
        model.ground(Image.new("RGB", (16, 16)), ["a circle"])
    grounding = tiny_bagel_model(seed=9, supports_grounding=True)
    boxes = grounding.ground(Image.new("RGB", (28, 28)), ["a circle", "a star"], max_new_tokens=8)
    assert len(boxes) == 2 and all(isinstance(found, list) for found in boxes)

    # The tiny tokenizer reproduces a concise grounding answer exactly, so a trained tiny model can ground.
    answer = grounding_answer([(2, 1, 12, 9), (0, 0, 20, 10)], style="concise")
    ids = grounding.tokenize([answer])[0]
    assert grounding.tokenizer.decode(ids, skip_special_tokens=True) == answer
    assert parse_boxes(answer, (20, 10)) == [(2, 1, 12, 9), (0, 0, 20, 10)]
