import pytest

from trl_srum.models.bagel import BagelModel
from trl_srum.models.bagel.tiny import tiny_bagel_model


@pytest.fixture(scope="module")
def tiny_model() -> BagelModel:
    """A tiny random BAGEL with its word-level tokenizer; tests must not modify it."""
    return tiny_bagel_model(seed=0)
