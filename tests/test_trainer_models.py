"""One trainer for every model: the same `SRUMTrainer` drives tiny BAGEL and tiny BLIP3o, and no code outside
trl_srum/models/ (the package and the recipe scripts that are not about one family) holds a model-specific branch."""

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel

from trl_srum import SRUMConfig, SRUMTrainer
from trl_srum.models.bagel.tiny import tiny_bagel_model
from trl_srum.models.blip3o.tiny import TINY_FEATURE_DIM, tiny_blip3o
from trl_srum.rollout import ROLLOUT_FEATURES

from .helpers import tiny_rollout_rows


REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Family:
    """How to build a tiny model of one family and draw rollouts with its own sampler."""

    name: str
    build: Callable[[], torch.nn.Module]
    image_size: tuple[int, int]
    latent_dim: int
    sampling: dict[str, Any]
    # LoRA on a tiny generator learns slowly: its latent input and output layers are trained fully in the toy task
    lora_modules_to_save: list[str] = field(default_factory=list)


FAMILIES = {
    "bagel": Family(
        "bagel",
        lambda: tiny_bagel_model(seed=0),
        image_size=(16, 16),
        latent_dim=16,  # 4 VAE channels, patchified 2x2
        sampling={"num_timesteps": 3},
        lora_modules_to_save=["llm2vae", "vae2llm"],
    ),
    "blip3o": Family(
        "blip3o",
        lambda: tiny_blip3o(seed=0),
        image_size=(32, 32),
        latent_dim=TINY_FEATURE_DIM,
        sampling={"num_inference_steps": 2, "decoder_num_inference_steps": 2},
        lora_modules_to_save=["patch_embedder", "norm_out"],
    ),
}


def rollout_dataset(model, family: Family, num_rows: int = 4) -> Dataset:
    """Rollout rows as stage 1 writes them: the model's own images and latents, with made-up judgements."""
    rows = tiny_rollout_rows(model, num_rows, family.image_size, **family.sampling)
    for row in rows:
        assert row["image"].size == family.image_size
        assert row["latents"].shape[0] == row["latent_grid"][0] * row["latent_grid"][1]
    return Dataset.from_list(rows, features=ROLLOUT_FEATURES)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def toy_dataset(family) -> Dataset:
    return rollout_dataset(family.build(), family)


def make_config(tmp_path: Path, **kwargs) -> SRUMConfig:
    settings = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "max_steps": 10,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "disable_tqdm": True,
        # the toy task: high noise only, no prompt dropout, where a few steps learn each prompt's latent
        "timestep_min": 0.9,
        "text_dropout": 0.0,
    }
    settings.update(kwargs)
    return SRUMConfig(**settings)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def train_and_evaluate(trainer: SRUMTrainer) -> tuple[float, float]:
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    return before, after


def test_rollouts_carry_the_generators_own_latents(family, toy_dataset):
    model = family.build()
    row = toy_dataset[0]
    latents = torch.tensor(row["latents"])
    rows, cols = row["latent_grid"]
    assert latents.shape == (rows * cols, family.latent_dim)
    assert tuple(row["latent_grid"]) == model.latent_grid(family.image_size)
    assert torch.isfinite(latents).all() and latents.std() > 0


def test_srum_trains_only_the_generator(tmp_path, family, toy_dataset):
    model = family.build()
    initial = snapshot(model)
    generation = set(model.generation_parameter_names())
    assert generation and generation < set(initial)

    trainer = SRUMTrainer(model, make_config(tmp_path), train_dataset=toy_dataset, eval_dataset=toy_dataset)
    trainable = {name for name, parameter in trainer.model.named_parameters() if parameter.requires_grad}
    assert trainable == generation
    before, after = train_and_evaluate(trainer)
    history = [entry for entry in trainer.state.log_history if "loss_reward" in entry]
    assert len(history) == 10
    assert all(math.isfinite(entry[key]) for entry in history for key in ("loss", "loss_reward", "loss_anchor"))
    assert after < 0.85 * before, (before, after)

    changed = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, initial[name])}
    assert changed and changed <= generation
    for name, parameter in model.named_parameters():
        if name not in generation:
            assert torch.equal(parameter, initial[name]), f"{name} (not a generation parameter) changed"


def test_lora_preset_adapts_only_the_generator(tmp_path, family, toy_dataset):
    model = family.build()
    initial = snapshot(model)
    generation = set(model.generation_parameter_names())
    trainer = SRUMTrainer(
        model,
        make_config(tmp_path, max_steps=20),
        train_dataset=toy_dataset,
        eval_dataset=toy_dataset,
        # no target_modules: the trainer uses the model's generation-only preset
        peft_config=LoraConfig(r=8, lora_alpha=16, modules_to_save=family.lora_modules_to_save),
    )
    assert isinstance(trainer.model, PeftModel)
    assert trainer.model.peft_config["default"].target_modules == model.generation_lora_target_modules
    trainable = [name for name, parameter in trainer.model.named_parameters() if parameter.requires_grad]
    lora = [name for name in trainable if "lora_" in name]
    saved = [name for name in trainable if ".modules_to_save." in name]
    assert lora and sorted(lora + saved) == sorted(trainable)
    # every adapted layer and every fully trained copy belongs to the generator
    for name in lora:
        layer = name.split(".lora_")[0].removeprefix("base_model.model.")
        assert f"{layer}.weight" in generation, name
    for name in saved:
        assert name.removeprefix("base_model.model.").replace(".modules_to_save.default.", ".") in generation, name

    before, after = train_and_evaluate(trainer)
    assert math.isfinite(before) and math.isfinite(after)
    assert after < 0.85 * before, (before, after)
    # the base weights, judge and generator alike, are bit-identical: only the adapters (and the copies) learned
    base = trainer.model.get_base_model()
    for name, parameter in base.named_parameters():
        if "lora_" in name or ".modules_to_save." in name:
            continue
        original = name.replace(".base_layer.", ".").replace(".original_module.", ".")
        assert torch.equal(parameter, initial[original]), f"{name} changed under LoRA"
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in base.named_parameters() if "lora_B" in n)


def test_reference_constraint_under_lora_uses_the_adapter_free_model(tmp_path, family, toy_dataset):
    trainer = SRUMTrainer(
        family.build(),
        make_config(tmp_path, max_steps=3, constraint="reference", reference_weight=0.5),
        train_dataset=toy_dataset,
        peft_config=LoraConfig(r=4, lora_alpha=8),
    )
    assert trainer.ref_model is None
    trainer.train()
    constraints = [entry["loss_reference"] for entry in trainer.state.log_history if "loss_reference" in entry]
    # LoRA's B starts at zero: at step 0 the adapted model is the reference; then it moves away from it.
    assert constraints[0] == pytest.approx(0.0, abs=1e-10)
    assert constraints[-1] > 0.0


# ---------------------------------------------------------------------------------------------- no model branches
# The rule (docs/adapters.md): no code outside trl_srum/models/ may name a model family, so that a new model plugs in
# through the protocol alone. Scanned: every module of the package outside trl_srum/models/, and every recipe script
# except those that exist to build, benchmark or measure one family (listed below with why). New files are scanned by
# default. The few legitimate hits are allowed by exact word, file by file, with a reason; everything else fails.
MODEL_SPECIFIC_RECIPES = {
    "recipes/shapes/pretrain.py": "builds and pretrains the shapes world's BAGEL from its config",
    "recipes/benchmarks/bench_bagel.py": "benchmarks BAGEL's own sampler and KV cache",
    "recipes/benchmarks/bench_memory.py": "checks the BAGEL-7B memory calculator against measured peaks",
    "recipes/benchmarks/bench_loss.py": "times the loss on each family's tiny model, by name",
    "recipes/benchmarks/bench_pretrain.py": "times the shapes world's BAGEL pretraining, old loop against new",
}
# The shapes world's pretraining builds and trains its BAGEL through the architecture's own modules (the MoT layers,
# the ViT, the VAE): like the recipes above, it exists for one family and is skipped by the scan.
MODEL_SPECIFIC_MODULES = {
    "trl_srum/shapes/pretraining.py": "pretrains the shapes world's BAGEL chunk by chunk",
    "trl_srum/shapes/pretraining_data.py": "draws the shapes world's BAGEL's own samples for its understanding data",
    "trl_srum/shapes/training_forward.py": "the batched training forward of BAGEL's two pathways",
}
ALLOWED_MODEL_WORDS = {
    "trl_srum/shapes/pretrained.py": (
        {"shapes_bagel"},
        "the shapes world's shipped model is a BAGEL: this module names its folder",
    ),
    "trl_srum/eval/config.py": (
        {"Qwen/Qwen2.5-VL-7B-Instruct"},
        "the Hub id of `trl-srum eval`'s default external VLM judge: a model it loads, not a branch on the trained one",
    ),
    "recipes/srum_bagel.py": (
        {"bagel"},
        "the folder of its default recipe, recipes/bagel/srum/config_shapes.yaml",
    ),
    "recipes/shapes/experiments.py": (
        {"bagel"},
        "reads the main job's recipe, recipes/bagel/srum/config_shapes.yaml, as its defaults",
    ),
    "recipes/benchmarks/bench_end_to_end.py": (
        {"bagel"},
        "times the main job's recipe, recipes/bagel/srum/config_shapes.yaml, unless told another",
    ),
    "recipes/benchmarks/bench_judge.py": (
        {"trl_srum.models.bagel.tiny", "tiny_bagel_model", "tiny random BAGEL (random weights)"},
        "a tiny random BAGEL is its default model when none is named; a named one loads through the registry",
    ),
}
MODEL_WORDS = ("bagel", "blip3o", "blip3", "qwen")


def generic_files() -> list[Path]:
    package = [
        path
        for path in REPO_ROOT.glob("trl_srum/**/*.py")
        if not path.relative_to(REPO_ROOT).is_relative_to("trl_srum/models")
        and str(path.relative_to(REPO_ROOT)) not in MODEL_SPECIFIC_MODULES
    ]
    recipes = [
        path
        for path in REPO_ROOT.glob("recipes/**/*.py")
        if str(path.relative_to(REPO_ROOT)) not in MODEL_SPECIFIC_RECIPES
    ]
    files = sorted(package + recipes)
    # The scan must not pass vacuously after a move: the trainer, the collator and stage 1 are in it.
    names = {str(path.relative_to(REPO_ROOT)) for path in files}
    assert {"trl_srum/srum_trainer.py", "trl_srum/collator.py", "trl_srum/rollout/runner.py"} <= names, names
    assert {"recipes/srum_bagel.py", "recipes/srum_blip3o.py"} <= names, names
    return files


def docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def model_specific_code(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """Every identifier, import and string literal (docstrings and `help` texts excepted) that names a model family."""
    tree = ast.parse(path.read_text(), filename=str(path))
    documentation = docstring_nodes(tree)
    for node in ast.walk(tree):
        # `field(metadata={"help": ...})` and argparse's `help=...` texts are documentation too
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "help":
                    documentation.update(id(n) for n in ast.walk(value))
        elif isinstance(node, ast.keyword) and node.arg == "help":
            documentation.update(id(n) for n in ast.walk(node.value))
    found = []
    for node in ast.walk(tree):
        words: list[str] = []
        if isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            words = [node.name]
        elif isinstance(node, ast.arg):
            words = [node.arg]
        elif isinstance(node, ast.Import | ast.ImportFrom):
            words = [getattr(node, "module", None) or "", *(alias.name for alias in node.names)]
            words += [alias.asname or "" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in documentation:
            words = [node.value]
        for word in words:
            if any(model in word.lower() for model in MODEL_WORDS):
                found.append(f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}: {word!r}")
    return found


def test_generic_code_has_no_model_specific_branches():
    found, allowed_but_unused = [], []
    for path in generic_files():
        name = str(path.relative_to(REPO_ROOT))
        allowed, _ = ALLOWED_MODEL_WORDS.get(name, (set(), ""))
        hits = model_specific_code(path)
        found += [hit for hit in hits if hit.split(": ", 1)[1] not in {repr(word) for word in allowed}]
        used = {hit.split(": ", 1)[1] for hit in hits}
        allowed_but_unused += [f"{name}: {word!r}" for word in sorted(allowed) if repr(word) not in used]
    assert not found, (
        "model-specific code outside trl_srum/models/ (move it behind the protocol, or allow it in "
        "ALLOWED_MODEL_WORDS with a reason):\n" + "\n".join(found)
    )
    assert not allowed_but_unused, "allowed words that no longer occur (remove them):\n" + "\n".join(
        allowed_but_unused
    )


def test_the_scan_exceptions_name_existing_files():
    for name in [*MODEL_SPECIFIC_RECIPES, *MODEL_SPECIFIC_MODULES, *ALLOWED_MODEL_WORDS]:
        assert (REPO_ROOT / name).is_file(), f"{name} is listed in the no-model-branch rule but does not exist"


def test_the_branch_detector_sees_model_checks(tmp_path):
    # The static check above must not pass vacuously: these are the branches it exists to catch.
    probe = tmp_path / "probe.py"
    probe.write_text(
        '"""Works with BAGEL and BLIP3o."""\n'
        "from trl_srum.models.bagel import BagelModel\n"
        "def f(model, x):\n"
        '    """For BAGEL."""\n'
        "    if isinstance(model, BagelModel) or model.config.model_type == 'blip3o':\n"
        "        return x\n"
        "    return getattr(model, 'qwen_backbone', x)\n"
        "parser.add_argument('--family', default='blip3o-8b', help='e.g. a BAGEL')\n"
    )
    found = model_specific_code(probe, root=tmp_path)
    assert any("BagelModel" in hit for hit in found)
    assert any("'blip3o'" in hit for hit in found)
    assert any("qwen_backbone" in hit for hit in found)
    assert any("'blip3o-8b'" in hit for hit in found)  # a keyword's value is code; only `help=` is documentation
    assert not any("Works with" in hit or "For BAGEL" in hit or "e.g. a BAGEL" in hit for hit in found)
