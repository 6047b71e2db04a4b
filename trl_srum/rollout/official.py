"""Convert the released SRUM training data (a jsonl + an image folder) into the rollout dataset.

The released training jsonl has one record per image: ``bad_image_file`` / ``good_image_file`` (the same file),
``prompt`` and ``vlm_rewards``, whose item named ``global_layout_reward`` holds the global score and whose other
items hold the judged regions (``object``, ``bbox``, ``score``).
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets import Dataset
from PIL import Image
from tqdm.auto import tqdm

from .schema import ROLLOUT_FEATURES, STATUS_OK, make_row_id


GLOBAL_ITEM_NAME = "global_layout_reward"


def _official_records(jsonl_path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with jsonl_path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{jsonl_path}:{line_number}: not valid JSON ({error.msg})") from error


def official_record_to_row(record: dict[str, Any], image: Image.Image, where: str) -> dict[str, Any]:
    """One released record (and its loaded image) as a rollout row; `where` names the record in errors."""
    image_file = record.get("bad_image_file") or record.get("good_image_file")
    prompt = record.get("prompt")
    if not image_file or not isinstance(prompt, str):
        raise ValueError(f"{where}: a record needs 'bad_image_file' and a string 'prompt'")
    global_score = None
    regions = []
    for item in record.get("vlm_rewards") or []:
        if item.get("object") == GLOBAL_ITEM_NAME:
            global_score = item.get("score")
            continue
        regions.append(
            {
                "bbox": item.get("bbox"),
                "label": str(item.get("object", "")),
                "score": item.get("score"),
                "relevance": None,
                "source": "official",
            }
        )
    prompt_id = Path(image_file).stem
    return {
        "row_id": make_row_id(prompt_id, 0),
        "prompt_id": prompt_id,
        "prompt": prompt,
        "category": "",
        "candidate_index": 0,
        "seed": -1,
        "image": image,
        "latents": None,
        "latent_grid": None,
        "reasoning": None,
        "global_score": global_score,
        # Malformed boxes are kept as written: the reward map skips and counts them, as it does for our own rows.
        "regions": [r for r in regions if _is_four_numbers(r["bbox"])],
        "global_judge_output": "",
        "region_judge_output": "",
        "status": STATUS_OK,
        "error": "" if all(_is_four_numbers(r["bbox"]) for r in regions) else "dropped regions without a 4-number box",
    }


def _is_four_numbers(bbox: Any) -> bool:
    return isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(c, int | float) for c in bbox)


def _official_rows(jsonl_path: str, image_dir: str, file_stamp: tuple[int, int]) -> Iterator[dict[str, Any]]:
    # `file_stamp` (mtime, size) only feeds the datasets cache key, so an edited jsonl is never served from cache.
    for line_number, record in tqdm(_official_records(Path(jsonl_path)), desc="converting SRUM records"):
        where = f"{jsonl_path}:{line_number}"
        image_path = Path(image_dir) / str(record.get("bad_image_file") or record.get("good_image_file") or "")
        if not image_path.is_file():
            raise FileNotFoundError(f"{where}: image {image_path} not found")
        with Image.open(image_path) as image:
            yield official_record_to_row(record, image.convert("RGB"), where)


def convert_official_srum_data(jsonl_path: str | Path, image_dir: str | Path) -> Dataset:
    """Read the released SRUM training jsonl and its images into a rollout `Dataset` that `SRUMTrainer` trains on.

    Raises:
        FileNotFoundError: naming the jsonl or the first missing image.
        ValueError: naming the line of a malformed record.
    """
    jsonl_path, image_dir = Path(jsonl_path), Path(image_dir)
    if not jsonl_path.is_file():
        raise FileNotFoundError(f"SRUM jsonl not found: {jsonl_path}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"SRUM image folder not found: {image_dir}")
    stat = jsonl_path.stat()
    return Dataset.from_generator(
        _official_rows,
        features=ROLLOUT_FEATURES,
        gen_kwargs={
            "jsonl_path": str(jsonl_path.resolve()),
            "image_dir": str(image_dir.resolve()),
            "file_stamp": (stat.st_mtime_ns, stat.st_size),
        },
    )
