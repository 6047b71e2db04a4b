"""Shared builders for tests: tiny rollout datasets drawn by a tiny model, as stage 1 would write them, the
environment of the tests that launch scripts in other processes, and where the golden fixtures are."""

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset

from trl_srum.protocol import UnifiedModel
from trl_srum.rollout import ROLLOUT_FEATURES, STATUS_OK, make_row_id


REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
PROMPTS = ("a red circle", "two blue squares", "a green triangle above a yellow circle", "an orange square")


def golden_fixture(name: str, env_var: str) -> Path:
    """Where a golden fixture is: the path in `env_var` when set (another set of golden values), else the copy in
    tests/fixtures/. Whether it exists is checked by `requires_fixture`."""
    return Path(os.environ.get(env_var) or FIXTURES_DIR / name)


def requires_fixture(path: Path) -> pytest.MarkDecorator:
    """Skip when `path` is missing on a developer's machine; under CI (`CI` set) run anyway, so that a missing golden
    fixture fails the tests that need it instead of silently dropping a parity check."""
    return pytest.mark.skipif(not path.exists() and not os.environ.get("CI"), reason=f"no golden fixture at {path}")


def golden_cases(path: Path, key: str) -> list[dict[str, Any]]:
    """The cases listed under `key` in a fixture's JSON file; none (so the parametrized test is skipped) when the file
    is missing outside CI. Under CI a missing file raises here, failing collection with its path."""
    if not path.is_file() and not os.environ.get("CI"):
        return []
    return json.loads(path.read_text())[key]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def script_env() -> dict[str, str]:
    """This environment without any launcher state, offline, one thread per process, the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TRL_EXPERIMENTAL_SILENCE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


def tiny_rollout_rows(
    model: UnifiedModel,
    num_rows: int = 8,
    image_size: tuple[int, int] = (16, 16),
    seed: int = 0,
    candidates_per_prompt: int = 1,
    **sampling: Any,
) -> list[dict]:
    """Rows of the rollout schema with images and latents drawn by `model` (BAGEL's sampler with 3 steps unless
    `sampling` says otherwise) and made-up judgements; consecutive rows are candidates of one prompt in groups of
    `candidates_per_prompt` (each drawn from its own seed, and scored differently)."""
    prompt_indices = [index // candidates_per_prompt for index in range(num_rows)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in prompt_indices]
    with torch.no_grad():
        generated = model.generate_images(
            prompts,
            generators=[torch.Generator().manual_seed(seed + i) for i in range(num_rows)],
            image_size=image_size,
            **(sampling or {"num_timesteps": 3}),
        )
    width, height = image_size
    rows = []
    for index, (prompt_index, prompt, sample) in enumerate(zip(prompt_indices, prompts, generated, strict=True)):
        candidate = index % candidates_per_prompt
        rows.append(
            {
                "row_id": make_row_id(f"p{prompt_index}", candidate),
                "prompt_id": f"p{prompt_index}",
                "prompt": prompt,
                "category": "",
                "candidate_index": candidate,
                "seed": seed + index,
                "image": sample.image,
                "latents": sample.latents.numpy(),
                "latent_grid": list(sample.grid),
                "reasoning": sample.reasoning,
                "global_score": [0.8, -0.4, 0.2, 1.0][index % 4],
                "regions": [
                    {
                        "bbox": [0.0, 0.0, width / 2, height / 2],
                        "label": "object",
                        "score": [0.9, -0.6][index % 2],
                        "relevance": None,
                        "source": "test",
                    }
                ],
                "global_judge_output": "",
                "region_judge_output": "",
                "status": STATUS_OK,
                "error": "",
            }
        )
    return rows


def tiny_rollout_dataset(model: UnifiedModel, num_rows: int = 8, **kwargs) -> Dataset:
    return Dataset.from_list(tiny_rollout_rows(model, num_rows, **kwargs), features=ROLLOUT_FEATURES)
