"""The shapes-world BAGEL that ships with the package, and the main job's default recipe that runs on it."""

import logging

import pytest
import torch

from trl_srum.judge.prompts import global_probability_question
from trl_srum.models import load_unified_model
from trl_srum.models.bagel import BagelModel
from trl_srum.pipeline import RoundsConfig
from trl_srum.rollout import RolloutConfig
from trl_srum.scripts.run import RunArguments
from trl_srum.scripts.utils import OncePerMessage, SRUMModelConfig, load_model, parse_arguments
from trl_srum.shapes import describe, render
from trl_srum.shapes.plugin import SHAPES_MODEL_NAME
from trl_srum.shapes.pretrained import DEFAULT_MODEL_DIR, SHAPES_IMAGE_SIZE, SHAPES_SAMPLING, load_shapes_model
from trl_srum.srum_config import SRUMConfig

from ..helpers import REPO_ROOT


MAIN_JOB_CONFIG = REPO_ROOT / "recipes" / "bagel" / "srum" / "config_shapes.yaml"
SPEC = {"objects": [{"shape": "circle", "color": "red", "count": 1}], "relation": None}


@pytest.fixture(scope="module")
def model() -> BagelModel:
    return load_shapes_model().eval()


def test_shipped_model_loads_through_from_pretrained_and_is_small():
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size < 20 * 2**20
    loaded = load_unified_model(str(DEFAULT_MODEL_DIR), dtype=torch.float32)
    assert isinstance(loaded, BagelModel) and loaded.config.model_type == "bagel"
    assert loaded.config.supports_grounding


def test_shipped_model_draws_with_enough_latent_tokens_for_local_rewards(model):
    rows, cols = model.latent_grid((SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE))
    assert rows >= 8 and cols >= 8
    settings = {**SHAPES_SAMPLING, "num_timesteps": 4}
    with torch.no_grad():
        first, again = (
            model.generate_images(
                [describe(SPEC)],
                generators=[torch.Generator().manual_seed(3)],
                image_size=(SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE),
                **settings,
            )[0]
            for _ in range(2)
        )
    assert first.image.size == (SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE)
    assert first.latents.shape[0] == rows * cols
    assert torch.equal(first.latents, again.latents)  # the seed alone decides the sample


def test_shipped_model_prefers_yes_for_a_clean_matching_render(model):
    image = render(SPEC, size=SHAPES_IMAGE_SIZE, seed=0)
    wrong = {"objects": [{"shape": "square", "color": "blue", "count": 3}], "relation": None}
    questions = [global_probability_question(describe(s), image.size, style="concise") for s in (SPEC, wrong)]
    with torch.no_grad():
        log_probs = model.score_answers(image, questions, ["yes", "no"])
    assert torch.isfinite(log_probs).all()
    margin = log_probs[:, 0] - log_probs[:, 1]  # log P(yes) - log P(no)
    assert margin[0] > margin[1]


def main_job_arguments() -> tuple:
    """What `recipes/srum_bagel.py` (`trl-srum run` on its default recipe) parses with no arguments."""
    classes = (RunArguments, RoundsConfig, SRUMConfig, RolloutConfig, SRUMModelConfig)
    return parse_arguments(classes, [], prog="srum_bagel.py", default_config=MAIN_JOB_CONFIG)


def test_main_job_defaults_to_the_shipped_model_and_its_sampler():
    run_args, _, training_args, rollout_config, model_args = main_job_arguments()
    assert model_args.model_name_or_path == SHAPES_MODEL_NAME  # the plug-in's name of the shipped model
    assert run_args.eval_protocol == "shapes" and rollout_config.prompt_source == "shapes"
    assert (rollout_config.image_width, rollout_config.image_height) == (SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE)
    for key, value in SHAPES_SAMPLING.items():
        assert rollout_config.generation_kwargs[key] == (list(value) if isinstance(value, tuple) else value), key
    assert training_args.use_cpu


def test_main_job_loads_the_shipped_model_on_the_process_device():
    model_args = main_job_arguments()[4]
    model = load_model(model_args, torch.device("cpu"))
    assert model.name_or_path == str(DEFAULT_MODEL_DIR)
    assert isinstance(model, BagelModel) and model.device.type == "cpu" and not model.training


def test_main_job_logs_a_repeated_bitsandbytes_warning_once(caplog):
    logger = logging.getLogger("test.once_per_message")
    once = OncePerMessage()
    logger.addFilter(once)
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            for _ in range(3):
                logger.warning("MatMul8bitLt: inputs will be cast from %s to float16", torch.bfloat16)
            logger.warning("MatMul8bitLt: inputs will be cast from %s to float16", torch.float32)
    finally:
        logger.removeFilter(once)
    assert [r.getMessage().split()[-3] for r in caplog.records] == ["torch.bfloat16", "torch.float32"]
