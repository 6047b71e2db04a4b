import numpy as np
import pytest
import torch

from trl_srum.models.blip3o.tiny import TINY_FEATURE_DIM, tiny_pixel_decoder


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return tiny_pixel_decoder()


def draw(decoder, tokens, seeds, image_size=(24, 16)):
    negative = torch.linspace(-1, 1, 64 * TINY_FEATURE_DIM).view(1, 64, TINY_FEATURE_DIM)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    images = decoder(
        tokens, negative_tokens=negative, generators=generators, image_size=image_size, num_inference_steps=3
    )
    return [np.asarray(image, dtype=np.int16) for image in images]


def test_decoder_draws_images_of_the_requested_size(decoder):
    tokens = torch.randn(2, 64, TINY_FEATURE_DIM, generator=torch.Generator().manual_seed(0))
    images = decoder(
        tokens,
        negative_tokens=torch.zeros(1, 64, TINY_FEATURE_DIM),
        generators=[torch.Generator(), torch.Generator()],
        image_size=(24, 16),
        num_inference_steps=2,
    )
    assert [(image.size, image.mode) for image in images] == [((24, 16), "RGB")] * 2


def test_decoder_noise_comes_only_from_each_images_generator(decoder):
    tokens = torch.randn(3, 64, TINY_FEATURE_DIM, generator=torch.Generator().manual_seed(0))
    batched = draw(decoder, tokens, [1, 2, 3])
    assert all(np.array_equal(a, b) for a, b in zip(batched, draw(decoder, tokens, [1, 2, 3])))
    for index, seed in enumerate([1, 2, 3]):
        (alone,) = draw(decoder, tokens[index : index + 1], [seed])
        assert np.abs(alone - batched[index]).max() <= 1
    (reseeded,) = draw(decoder, tokens[:1], [7])
    assert np.abs(reseeded - batched[0]).max() > 1


def test_decoder_rejects_bad_requests(decoder):
    tokens = torch.zeros(1, 64, TINY_FEATURE_DIM)
    with pytest.raises(ValueError, match=r"\(25, 16\).*multiples of 2"):
        draw(decoder, tokens, [0], image_size=(25, 16))
    with pytest.raises(ValueError, match="2 generators for 1 token sets"):
        draw(decoder, tokens, [0, 1])


@torch.no_grad()
def test_decode_latents_is_deterministic_and_batch_independent(tiny_model):
    latents = list(torch.randn(2, 64, TINY_FEATURE_DIM, generator=torch.Generator().manual_seed(0)))
    settings = {"image_size": (16, 16), "num_inference_steps": 2}
    batched = tiny_model.decode_latents(latents, [(8, 8)] * 2, **settings)
    (second,) = tiny_model.decode_latents(latents[1:], [(8, 8)], **settings)
    assert np.abs(np.asarray(second, dtype=np.int16) - np.asarray(batched[1], dtype=np.int16)).max() <= 1
