"""Fixtures of the evaluation tests: the shipped shapes-world model and one finished run of it."""

import pytest
import torch

from trl_srum.eval import EvalConfig, evaluate_model
from trl_srum.models import load_unified_model
from trl_srum.shapes.pretrained import DEFAULT_MODEL_DIR

from .utils import SETTINGS


@pytest.fixture(scope="package")
def model():
    return load_unified_model(DEFAULT_MODEL_DIR, dtype=torch.float32).eval()


@pytest.fixture(scope="package")
def reference(model, tmp_path_factory):
    """An uninterrupted single-process run, with one thread like every test (the numerics depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate_model(model, EvalConfig(eval_dir=str(tmp_path_factory.mktemp("reference")), **SETTINGS))
    finally:
        torch.set_num_threads(threads)
