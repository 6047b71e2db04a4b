"""Loading by Hub id: a repository in the Hugging Face cache, exactly as a download leaves it, loads as the same folder
on disk does, and only the files loading reads are asked for.

No test reaches the network. Each builds a cache (`hub/models--ORG--NAME/snapshots/<sha>/...`, `refs/main`, and the
tree listing huggingface_hub keeps of the whole repository) in a temporary folder and runs offline. The listing names
files the snapshot does not hold (a README, weights in another precision, a training state): offline,
huggingface_hub refuses a snapshot that lacks a file the download asks for, so these tests fail if the loader asks for
more than it needs.
"""

import json
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

from trl_srum.models import load_unified_model
from trl_srum.models.bagel import BagelModel
from trl_srum.models.bagel.conversion import CHECKPOINT_FILE_PATTERNS as BAGEL_PATTERNS
from trl_srum.models.blip3o.conversion import checkpoint_file_patterns as blip3o_patterns
from trl_srum.models.blip3o.tiny import tiny_blip3o

from ..helpers import REPO_ROOT, golden_fixture, requires_fixture, script_env


BAGEL_FIXTURE = golden_fixture("bagel_tiny", "BAGEL_FIXTURE_DIR")
BLIP3O_FIXTURE = golden_fixture("blip3o_tiny", "BLIP3O_FIXTURE_DIR")
SHIPPED_MODEL = REPO_ROOT / "trl_srum" / "assets" / "shapes_bagel"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repository(hub_dir: Path, repo_id: str, files: dict[str, Path], unneeded: list[str]) -> None:
    """Put `files` (repository path -> local file) into the cache as the snapshot of `repo_id` at `main`, and record
    a tree listing with `unneeded` paths as well, which the snapshot does not hold."""
    storage = hub_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / COMMIT
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, snapshot / name)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    listing = {
        name: TreeCacheEntry(size=source.stat().st_size, blob_id=f"{index:040x}")
        for index, (name, source) in enumerate(files.items())
    }
    listing.update(
        {name: TreeCacheEntry(size=1, blob_id=f"{len(listing) + i:040x}") for i, name in enumerate(unneeded)}
    )
    write_tree_cache(str(storage), COMMIT, listing)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache that huggingface_hub reads from, offline."""
    hub = tmp_path / "hf_home" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hub


def needed(name: str, patterns: list[str]) -> bool:
    return any(fnmatch(name, pattern) for pattern in patterns)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    first, second = a.state_dict(), b.state_dict()
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


@requires_fixture(BAGEL_FIXTURE)
@torch.no_grad()
def test_official_bagel_loads_by_hub_id_as_from_its_folder(hub_dir):
    # The official layout has a config.json without model_type: the loader must recognise it by llm_config.json.
    assert "model_type" not in json.loads((BAGEL_FIXTURE / "config.json").read_text())
    files = {path.name: path for path in BAGEL_FIXTURE.iterdir() if needed(path.name, list(BAGEL_PATTERNS))}
    unneeded = [path.name for path in BAGEL_FIXTURE.iterdir() if path.name not in files]
    assert {"ema.safetensors", "ae.safetensors", "llm_config.json"} <= files.keys() and "cases.safetensors" in unneeded
    cache_repository(hub_dir, "ByteDance-Seed/BAGEL-tiny", files, unneeded + [".gitattributes", "model.pt"])

    by_id = load_unified_model("ByteDance-Seed/BAGEL-tiny")
    from_folder = load_unified_model(BAGEL_FIXTURE)
    assert type(by_id) is BagelModel
    assert_same_weights(by_id, from_folder)
    assert by_id.config._name_or_path == "ByteDance-Seed/BAGEL-tiny"  # what a model card names as the base model
    assert by_id.config.to_diff_dict() | {"_name_or_path": ""} == from_folder.config.to_diff_dict() | {
        "_name_or_path": ""
    }


@requires_fixture(BLIP3O_FIXTURE)
@torch.no_grad()
def test_official_blip3o_loads_by_hub_id_as_from_its_folder(hub_dir, tmp_path):
    # The official BLIP3o layout: a flat Qwen2.5-VL config.json, the weights, and the pixel decoder in bf16 files.
    folder = tmp_path / "official"
    (folder / "diffusion-decoder").mkdir(parents=True)
    shutil.copyfile(BLIP3O_FIXTURE / "config.json", folder / "config.json")
    shutil.copyfile(BLIP3O_FIXTURE / "weights.safetensors", folder / "model.safetensors")
    decoder = tiny_blip3o().decoder
    decoder.unet.save_pretrained(folder / "diffusion-decoder" / "unet", variant="bf16")
    decoder.vae.save_pretrained(folder / "diffusion-decoder" / "vae", variant="bf16")
    decoder.scheduler.save_pretrained(folder / "diffusion-decoder" / "scheduler")
    files = {str(path.relative_to(folder)): path for path in folder.rglob("*") if path.is_file()}
    patterns = blip3o_patterns(json.loads((folder / "config.json").read_text()))
    assert all(needed(name, patterns) for name in files), sorted(files)
    unneeded = [
        "README.md",
        "training_args.bin",
        "diffusion-decoder/unet/diffusion_pytorch_model.safetensors",
        "diffusion-decoder/vae/diffusion_pytorch_model.safetensors",
        "diffusion-decoder/pipeline_llava_gen.py",
    ]
    assert not any(needed(name, patterns) for name in unneeded)
    cache_repository(hub_dir, "BLIP3o/BLIP3o-tiny", files, unneeded)

    dit_config = json.loads((BLIP3O_FIXTURE / "dit_config.json").read_text())
    by_id = load_unified_model("BLIP3o/BLIP3o-tiny", dit_config=dit_config)
    from_folder = load_unified_model(folder, dit_config=dit_config)
    assert_same_weights(by_id, from_folder)
    assert_same_weights(by_id.decoder.unet, from_folder.decoder.unet)
    assert_same_weights(by_id.decoder.vae, from_folder.decoder.vae)


def test_a_repository_with_no_supported_model_is_named(hub_dir, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama"}))
    cache_repository(hub_dir, "someone/a-language-model", {"config.json": config}, [])
    with pytest.raises(ValueError, match="someone/a-language-model.*'llama'"):
        load_unified_model("someone/a-language-model")


def test_bagel_patterns_pick_the_files_of_the_official_release_and_nothing_else():
    # The files of the official BAGEL-7B-MoT repository (reference/bagel.md), with what loading reads marked True.
    release = {
        "ema.safetensors": True,
        "ae.safetensors": True,
        "config.json": True,
        "llm_config.json": True,
        "vit_config.json": True,
        "tokenizer.json": True,
        "tokenizer_config.json": True,
        "vocab.json": True,
        "merges.txt": True,
        "README.md": False,
        ".gitattributes": False,
    }
    assert {name: needed(name, list(BAGEL_PATTERNS)) for name in release} == release


@pytest.mark.slow
def test_rollout_command_loads_a_model_by_hub_id(tmp_path):
    # The shipped shapes-world BAGEL, as if it were published on the Hub in our own layout.
    hub = tmp_path / "hf_home" / "hub"
    files = {path.name: path for path in SHIPPED_MODEL.iterdir() if needed(path.name, list(BAGEL_PATTERNS))}
    cache_repository(hub, "trl-srum/shapes-bagel", files, ["README.md"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    env = script_env() | {"HF_HOME": str(tmp_path / "hf_home")}
    command = [
        sys.executable,
        "-m",
        "trl_srum.cli",
        "rollout",
        "--model_name_or_path",
        "trl-srum/shapes-bagel",
        "--prompts_file",
        str(prompts),
        "--rollout_dir",
        str(tmp_path / "rollouts"),
        "--image_width",
        "64",
        "--image_height",
        "64",
        "--generation_kwargs",
        '{"num_timesteps": 3}',
        "--proposer",
        "none",
        "--judge_mode",
        "prob",
        "--judge_style",
        "concise",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote 2 rollout rows" in result.stdout
