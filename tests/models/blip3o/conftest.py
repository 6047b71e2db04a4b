import pytest

from trl_srum.models.blip3o import Blip3oModel
from trl_srum.models.blip3o.tiny import tiny_blip3o


@pytest.fixture(scope="session")
def tiny_model() -> Blip3oModel:
    """A tiny random BLIP3o with processor and decoder, shared by tests that only run inference on it."""
    return tiny_blip3o()
