"""BAGEL (ByteDance-Seed/BAGEL-7B-MoT) as a transformers model implementing `trl_srum.protocol.UnifiedModel`."""

from transformers import AutoConfig, AutoModel

from trl_srum.models.bagel.configuration_bagel import BagelConfig
from trl_srum.models.bagel.modeling_bagel import (
    GEN_THINK_SYSTEM_PROMPT,
    GENERATION_LORA_TARGET_MODULES,
    VLM_THINK_SYSTEM_PROMPT,
    BagelModel,
)
from trl_srum.models.bagel.sampling import SamplerSettings


AutoConfig.register("bagel", BagelConfig)
AutoModel.register(BagelConfig, BagelModel)

__all__ = [
    "GENERATION_LORA_TARGET_MODULES",
    "GEN_THINK_SYSTEM_PROMPT",
    "VLM_THINK_SYSTEM_PROMPT",
    "BagelConfig",
    "BagelModel",
    "SamplerSettings",
]
