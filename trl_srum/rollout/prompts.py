"""Prompts for stage 1: files, read once and validated up front so that a bad file fails before any image is drawn,
and prompt sources that plug-ins register (`trl_srum.plugins`)."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..plugins import load_plugins


if TYPE_CHECKING:
    from .config import RolloutConfig


@dataclass(frozen=True)
class PromptRecord:
    prompt_id: str
    prompt: str
    category: str = ""


def prompt_record(item: object, index: int, where: str | Path) -> PromptRecord:
    """One prompt from an entry of a prompt file or a row of a dataset.

    An entry is a string, or an object with `prompt` (or `Question`) and optionally `category` (`Category`) and
    `prompt_id` (`Question_id`; default: the entry's index).
    """
    if isinstance(item, str):
        return PromptRecord(str(index), item)
    if not isinstance(item, dict):
        raise ValueError(f"{where}: entry {index} is neither a string nor an object")
    # The released T2I-CompBench files use Question / Category / Question_id.
    prompt = item.get("prompt", item.get("Question"))
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: entry {index} has no string 'prompt' (or 'Question')")
    prompt_id = item.get("prompt_id", item.get("Question_id", index))
    return PromptRecord(str(prompt_id), prompt, str(item.get("category", item.get("Category", ""))))


def load_prompts(path: str | Path) -> list[PromptRecord]:
    """Read prompts from a `.json` list, a `.jsonl` file or a `.txt` file (one prompt per line).

    Empty prompts are kept (stage 1 records them as invalid rows); a file without prompts and duplicate prompt ids
    are errors.

    Raises:
        FileNotFoundError / ValueError: naming the file and, where it applies, the entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read prompt file {path}: {error}") from error
    try:
        if path.suffix == ".json":
            items = json.loads(text)
            if not isinstance(items, list):
                raise ValueError(f"{path}: expected a JSON list of prompts")
        elif path.suffix == ".jsonl":
            items = []
            for line_number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        items.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg})") from error
        elif path.suffix == ".txt":
            items = text.splitlines()
        else:
            raise ValueError(f"{path}: unknown prompt file type {path.suffix!r} (use .json, .jsonl or .txt)")
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from error

    records = [prompt_record(item, index, path) for index, item in enumerate(items)]
    if not records:
        raise ValueError(f"{path}: the file holds no prompts")
    seen: set[str] = set()
    for record in records:
        if record.prompt_id in seen:
            raise ValueError(f"{path}: duplicate prompt id {record.prompt_id!r}")
        seen.add(record.prompt_id)
    return records


# name -> function(size, seed) giving the prompts of a source (`register_prompt_source`)
PromptSource = Callable[[int, int], list[PromptRecord]]
PROMPT_SOURCES: dict[str, PromptSource] = {}


def register_prompt_source(name: str, source: PromptSource) -> None:
    """Make `source(size, seed)` the prompts of `RolloutConfig(prompt_source=name, prompt_source_size=size)`.

    A plug-in registers its sources when it loads (`trl_srum.plugins`); what `size` counts is the source's to say
    (the shapes world's: prompts per category).
    """
    PROMPT_SOURCES[name] = source


def source_prompts(name: str, size: int, seed: int) -> list[PromptRecord]:
    """The prompts of a registered source.

    Raises:
        ValueError: naming the registered sources when `name` is not one of them.
    """
    load_plugins()
    if name not in PROMPT_SOURCES:
        raise ValueError(f"no prompt source {name!r}; registered: {sorted(PROMPT_SOURCES)} (see trl_srum.plugins)")
    return PROMPT_SOURCES[name](size, seed)


def resolve_prompts(
    prompts_file: str | None, prompt_source: str | None, source_size: int, seed: int, limit: int | None
) -> list[PromptRecord]:
    """The prompts a stage-1 configuration asks for: a file, or a registered prompt source."""
    if prompts_file and prompt_source:
        raise ValueError("give either prompts_file or prompt_source, not both")
    if prompts_file:
        records = load_prompts(prompts_file)
    elif prompt_source:
        if source_size < 1:
            raise ValueError(f"prompt_source {prompt_source!r} needs prompt_source_size >= 1, got {source_size}")
        records = source_prompts(prompt_source, source_size, seed)
    else:
        raise ValueError("stage 1 needs prompts: set prompts_file or prompt_source")
    return records[:limit] if limit is not None else records


def config_prompts(config: "RolloutConfig") -> list[PromptRecord]:
    """The prompts a `RolloutConfig` names: its prompt file or its prompt source (see `resolve_prompts`)."""
    return resolve_prompts(
        config.prompts_file, config.prompt_source, config.prompt_source_size, config.rollout_seed, config.num_prompts
    )
