"""Stage 1 of SRUM: self-generated, self-judged rollouts, stored as a `datasets` dataset."""

from .config import RolloutConfig
from .official import convert_official_srum_data
from .prompts import PromptRecord, config_prompts, load_prompts, register_prompt_source, resolve_prompts
from .runner import RolloutRunner, build_proposer, candidate_seed, run_rollouts
from .schema import ROLLOUT_FEATURES, ROLLOUT_STATUSES, STATUS_OK, make_row_id


__all__ = [
    "ROLLOUT_FEATURES",
    "ROLLOUT_STATUSES",
    "STATUS_OK",
    "PromptRecord",
    "RolloutConfig",
    "RolloutRunner",
    "build_proposer",
    "candidate_seed",
    "convert_official_srum_data",
    "load_prompts",
    "make_row_id",
    "config_prompts",
    "register_prompt_source",
    "resolve_prompts",
    "run_rollouts",
]
