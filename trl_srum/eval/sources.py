"""Where evaluation prompts come from: a file, a folder written by `datasets`, or a Hub dataset."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import DatasetDict, load_dataset, load_from_disk

from ..rollout.prompts import PromptRecord, load_prompts, prompt_record


# Prompt ids name the folders images are stored in (`<images>/<prompt_id>/0000.png`).
_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def load_rows(source: str, split: str) -> list[Any]:
    """Every entry of a prompt source, as written there.

    `source` is a `.json` list or a `.jsonl` file, a folder written by `Dataset.save_to_disk` (of `split` for a
    `DatasetDict`), or anything else `datasets.load_dataset` opens (a Hub dataset name, a local folder of data
    files).

    Raises:
        FileNotFoundError / ValueError: naming the source and, where it applies, the line.
    """
    path = Path(source)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            rows = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
            return rows
        if path.suffix == ".json":
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from error
            if not isinstance(rows, list):
                raise ValueError(f"{path}: expected a JSON list")
            return rows
        raise ValueError(f"{path}: unknown prompt file type {path.suffix!r} (use .json or .jsonl)")
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        dataset = load_from_disk(str(path))
    elif not path.exists() and (path.is_absolute() or source.startswith(".") or path.suffix in (".json", ".jsonl")):
        raise FileNotFoundError(f"no prompt file or dataset at {source}")
    else:
        try:
            dataset = load_dataset(source, split=split)
        except Exception as error:
            raise ValueError(f"cannot load prompt dataset {source!r} (split {split!r}): {error}") from error
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ValueError(f"{source} has no split {split!r} (it has {sorted(dataset)})")
        dataset = dataset[split]
    return list(dataset)


def load_prompt_records(source: str, split: str) -> list[PromptRecord]:
    """Prompts as `trl-srum rollout` reads them (`load_prompts` for files, the same fields for dataset rows)."""
    path = Path(source)
    if path.is_file():
        return load_prompts(path)
    return [prompt_record(row, index, source) for index, row in enumerate(load_rows(source, split))]


def check_prompts(records: Sequence[PromptRecord], where: str) -> None:
    """An evaluation's prompts must be non-empty, with unique ids that can name a folder.

    Raises:
        ValueError: naming the source and the first offending prompt.
    """
    if not records:
        raise ValueError(f"{where}: no prompts")
    seen: set[str] = set()
    for record in records:
        if not _SAFE_ID.fullmatch(record.prompt_id):
            raise ValueError(
                f"{where}: prompt id {record.prompt_id!r} cannot name an image folder "
                "(use letters, digits, '_', '-' and '.', not first)"
            )
        if record.prompt_id in seen:
            raise ValueError(f"{where}: duplicate prompt id {record.prompt_id!r}")
        if not record.prompt.strip():
            raise ValueError(f"{where}: prompt {record.prompt_id!r} is empty")
        seen.add(record.prompt_id)
