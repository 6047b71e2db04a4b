"""The shapes world as a trl-srum plug-in (entry point `shapes`, setup.cfg): its training prompts as a prompt source,
its oracle as an evaluation protocol, and its shipped model under a name.

    RolloutConfig(prompt_source="shapes", prompt_source_size=24)   # 24 training prompts per category
    trl-srum eval --protocol shapes --model_name_or_path trl-srum:shapes-model
"""

from ..eval.protocols import register_protocol
from ..models import register_model_alias
from ..rollout.prompts import PromptRecord, register_prompt_source
from .pretrained import DEFAULT_MODEL_DIR
from .spec import describe
from .splits import CATEGORIES, sample_specs


SHAPES_MODEL_NAME = "trl-srum:shapes-model"


def training_prompts(per_category: int, seed: int) -> list[PromptRecord]:
    """`per_category` prompts of every category from the training split; held-out combinations never."""
    return [
        PromptRecord(f"train-{category}-{index}", describe(spec), category)
        for category in CATEGORIES
        for index, spec in enumerate(sample_specs(category, per_category, seed, split="train"))
    ]


def register() -> None:
    register_prompt_source("shapes", training_prompts)
    register_protocol("shapes", "trl_srum.shapes.eval_protocol:ShapesProtocol")
    register_model_alias(SHAPES_MODEL_NAME, DEFAULT_MODEL_DIR)
