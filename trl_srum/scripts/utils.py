"""What the commands share: the model arguments of an image model, loading it onto the process's device, parsing a
YAML recipe whose keys belong to several commands, and the console log."""

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel
from trl import ModelConfig, TrlParser, get_quantization_config


logger = logging.getLogger("trl_srum")


@dataclass
class SRUMModelConfig(ModelConfig):
    """TRL's model arguments with image-model defaults: no causal-LM LoRA task type."""

    lora_task_type: str | None = field(
        default=None, metadata={"help": "PEFT task type; None for image generators (not a causal LM)."}
    )


def parse_arguments(
    dataclass_types: Sequence[type],
    argv: list[str] | None,
    *,
    prog: str,
    default_config: str | Path | None = None,
    ignore_other_keys: bool = False,
) -> tuple[Any, ...]:
    """Parse the command line (and its `--config` YAML) into `dataclass_types`.

    `default_config` is read when no `--config` is given. With `ignore_other_keys`, keys of the YAML that belong to
    another command are ignored (a recipe holds the keys of every stage), while unknown command-line options are still
    refused as typos.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv and default_config is not None:
        argv = ["--config", str(default_config), *argv]
    parser = TrlParser(dataclass_types, prog=prog)
    if not ignore_other_keys:
        return tuple(parser.parse_args_and_config(argv))
    *parsed, unknown = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(parsed[: len(dataclass_types)])


def load_model(model_args: ModelConfig, device: torch.device) -> PreTrainedModel:
    """The model a command works on (`model_name_or_path`: a folder, a Hub id or a name a plug-in registered, e.g.
    the shapes world's `trl-srum:shapes-model`), on `device`.

    Stage 1 samples and judges before any trainer exists, so the model must already sit on this process's
    accelerator: a trainer would only move it at stage 2.
    """
    from ..models import MODEL_ALIASES, load_unified_model

    if not model_args.model_name_or_path:
        raise ValueError(
            f"name a model with --model_name_or_path (a folder, a Hub id, or one of {sorted(MODEL_ALIASES)})"
        )
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = load_unified_model(
        model_args.model_name_or_path, device, dtype=dtype, quantization_config=get_quantization_config(model_args)
    ).eval()
    logger.info(f"loaded {model_args.model_name_or_path} on {model.device} ({model.dtype})")
    return model


class OncePerMessage(logging.Filter):
    """Let each distinct message through once. bitsandbytes logs a dtype-cast warning on every 8-bit matmul whose
    input is not float16 (bf16 training with `load_in_8bit`): millions of identical lines in a 7B run."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def log_to_console() -> None:
    """Show the package's progress messages (which batches each process takes, summaries, rounds) on stderr."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(OncePerMessage())
