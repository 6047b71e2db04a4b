"""BLIP3o (arXiv 2505.09568) for SRUM: a frozen Qwen2.5-VL judge and a flow DiT generator in EVA-CLIP space."""

from transformers import AutoConfig, AutoModel

from .configuration_blip3o import Blip3oConfig, Blip3oDiTConfig
from .decoder import Blip3oPixelDecoder
from .dit import Blip3oDiT
from .modeling_blip3o import Blip3oModel, Blip3oPreTrainedModel


AutoConfig.register(Blip3oConfig.model_type, Blip3oConfig)
AutoModel.register(Blip3oConfig, Blip3oModel)

__all__ = [
    "Blip3oConfig",
    "Blip3oDiT",
    "Blip3oDiTConfig",
    "Blip3oModel",
    "Blip3oPixelDecoder",
    "Blip3oPreTrainedModel",
]
