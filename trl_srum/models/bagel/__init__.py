"""BAGEL (ByteDance-Seed/BAGEL-7B-MoT) as a transformers model implementing `trl_srum.protocol.UnifiedModel`."""

from transformers import AutoConfig, AutoModel

from .configuration_bagel import BagelConfig
from .generation import GEN_THINK_SYSTEM_PROMPT
from .modeling_bagel import GENERATION_LORA_TARGET_MODULES, BagelModel
from .sampling import SamplerSettings
from .understanding import VLM_THINK_SYSTEM_PROMPT


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
