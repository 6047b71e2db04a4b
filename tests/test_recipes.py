"""What ships with the recipes works as shipped: every YAML recipe parses into the recipe's own argument classes, the
accelerate configs load, and every repository path that the docs, the README, the YAMLs and the docstrings name
exists (a user who follows them must not land on a missing file)."""

import ast
import re
from pathlib import Path

import pytest
import transformers.training_args
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from trl import TrlParser

from trl_srum import SRUMConfig
from trl_srum.pipeline import RoundsConfig
from trl_srum.rollout import RolloutConfig
from trl_srum.rollout.writer import DATASET_DIRNAME
from trl_srum.scripts.run import RunArguments
from trl_srum.scripts.utils import SRUMModelConfig

from .helpers import REPO_ROOT


RECIPE_YAMLS = sorted(REPO_ROOT.glob("recipes/**/srum/*.yaml"))
ACCELERATE_CONFIGS = sorted(REPO_ROOT.glob("recipes/accelerate_configs/*.yaml"))


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def recipe_argument_classes() -> tuple[type, ...]:
    """The dataclasses the recipes (`trl-srum run`, which `recipes/srum_bagel.py` launches) hand to `TrlParser`."""
    return RunArguments, RoundsConfig, SRUMConfig, RolloutConfig, SRUMModelConfig


def test_the_recipes_are_found():
    # The parametrized tests below must not pass vacuously after a move of the recipes.
    assert len(RECIPE_YAMLS) >= 6, RECIPE_YAMLS
    assert len(ACCELERATE_CONFIGS) >= 4, ACCELERATE_CONFIGS


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=rel)
def test_recipe_yaml_parses_into_the_recipe_arguments(path, monkeypatch):
    # The GPU recipes ask for bf16, which TrainingArguments refuses on a machine without a bf16 GPU; parse them as
    # the GPU they are written for would (nothing else in the parse depends on the hardware).
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda *args, **kwargs: True)
    parser = TrlParser(recipe_argument_classes())
    # Unknown keys raise here (fail_with_unknown_args), as they would when the recipe starts.
    _, _, training_args, rollout_config, _ = parser.parse_args_and_config(["--config", str(path)])
    raw = yaml.safe_load(path.read_text())
    assert training_args.output_dir == raw["output_dir"]
    assert rollout_config.rollout_dir == raw["rollout_dir"]


def test_recipes_do_not_share_output_folders():
    # A second recipe writing into another's rollout_dir is refused (its settings differ), and one writing into the
    # other's output_dir would mix checkpoints: every recipe owns its folders.
    owners: dict[str, list[str]] = {}
    for path in RECIPE_YAMLS:
        raw = yaml.safe_load(path.read_text())
        for key in ("output_dir", "rollout_dir"):
            owners.setdefault(str(Path(raw[key])), []).append(f"{rel(path)} ({key})")
    shared = {folder: names for folder, names in owners.items() if len(names) > 1}
    assert not shared, "recipes share folders:\n" + "\n".join(f"{k}: {', '.join(v)}" for k, v in shared.items())


def test_docs_train_on_the_folder_trl_srum_rollout_writes():
    # Every `--rollout_dataset` the docs show follows a `trl-srum rollout` run, which writes one merged dataset
    # (trl_srum/rollout/writer.py), not the per-round folders of the recipe's own stage 1.
    expected = f"<rollout_dir>/{DATASET_DIRNAME}"
    texts = [REPO_ROOT / "README.md", *sorted(REPO_ROOT.glob("docs/*.md")), *RECIPE_YAMLS]
    shown = [
        (rel(path), value) for path in texts for value in re.findall(r"--rollout_dataset\s+(\S+)", path.read_text())
    ]
    assert shown, "no `--rollout_dataset` example left in the docs: drop or update this test"
    wrong = [f"{path}: {value.strip('`.,')}" for path, value in shown if value.strip("`.,") != expected]
    assert not wrong, f"stage 2 must read {expected} (what `trl-srum rollout` writes):\n" + "\n".join(wrong)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=rel)
def test_accelerate_config_loads(path):
    # accelerate's own loader: unknown top-level keys and unknown distributed types raise.
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1


# ------------------------------------------------------------------------------------ paths the docs point to
# Top-level folders whose paths the docs name; a path starting with one of them is a repository path.
KNOWN_ROOTS = ("trl_srum", "recipes", "docs", "tests")
PATH_PATTERN = re.compile(rf"(?<![\w./<>-])((?:{'|'.join(KNOWN_ROOTS)})/[\w./*<>-]*)")
LINK_PATTERN = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A `<placeholder>` stands for any one path component (e.g. `recipes/<model>/srum/config_*.yaml`).
PLACEHOLDER = re.compile(r"<[^/>]*>")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def documentation_texts() -> list[tuple[Path, str]]:
    """(file, text) of every place a user reads paths in: the docs, the README, the YAMLs (their comments) and the
    module, class and function docstrings of the package and the recipe scripts."""
    texts = [(path, path.read_text()) for path in [REPO_ROOT / "README.md", *sorted(REPO_ROOT.glob("docs/*.md"))]]
    texts += [(path, path.read_text()) for path in sorted(REPO_ROOT.glob("recipes/**/*.yaml"))]
    for path in sorted([*REPO_ROOT.glob("trl_srum/**/*.py"), *REPO_ROOT.glob("recipes/**/*.py")]):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                docstring = ast.get_docstring(node, clean=False)
                if docstring:
                    texts.append((path, docstring))
    return texts


def named_paths(text: str) -> set[str]:
    """Repository-relative paths (possibly globs or `<placeholder>`s) written in `text`, backticked or not."""
    found = set()
    for match in PATH_PATTERN.finditer(text):
        # A full stop after a path ends the sentence, not the file name (no shipped name ends in one).
        found.add(match.group(1).rstrip("."))
    return found


def linked_paths(path: Path, text: str) -> set[tuple[str, str]]:
    """(target file relative to the repository, anchor) of every relative markdown link of `text`."""
    found = set()
    if path.suffix != ".md":
        return found
    for target in LINK_PATTERN.findall(FENCE.sub("", text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path.resolve()
        found.add(
            (str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(resolved), anchor)
        )
    return found


def path_exists(path: str) -> bool:
    pattern = PLACEHOLDER.sub("*", path.rstrip("/"))
    if "*" in pattern:
        return any(REPO_ROOT.glob(pattern))
    return (REPO_ROOT / pattern).exists()


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of `markdown`: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", markdown), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def dangling_references() -> list[str]:
    missing = []
    for source, text in documentation_texts():
        for path in sorted(named_paths(text)):
            if not path_exists(path):
                missing.append(f"{rel(source)}: {path}")
        for target, anchor in sorted(linked_paths(source, text)):
            target_path = REPO_ROOT / target
            if not target_path.exists():
                missing.append(f"{rel(source)}: link to {target}")
            elif anchor and target_path.suffix == ".md" and anchor not in heading_anchors(target_path.read_text()):
                missing.append(f"{rel(source)}: link to {target}#{anchor} (no such heading)")
    return sorted(set(missing))


def test_every_path_the_docs_name_exists():
    missing = "\n".join(dangling_references())
    assert not missing, f"paths named in the docs, README, YAMLs or docstrings that do not exist:\n{missing}"


def test_the_path_extractor_sees_paths():
    # The check above must not pass vacuously: these are the references it exists to catch, and to leave alone.
    text = (
        "Run `recipes/bagel/srum/config_7b.yaml`, see docs/missing.md, or trl_srum/models/ and "
        "recipes/<model>/srum/config_*.yaml. Not paths: my_recipes/x.yaml, output/srum/rollouts, `trl_srum.models`."
    )
    assert named_paths(text) == {
        "recipes/bagel/srum/config_7b.yaml",
        "docs/missing.md",
        "trl_srum/models/",
        "recipes/<model>/srum/config_*.yaml",
    }
    assert not path_exists("recipes/bagel/srum/config_7b.yaml") and not path_exists("docs/missing.md")
    assert path_exists("trl_srum/models/") and path_exists("recipes/<model>/srum/config_*.yaml")
    doc = REPO_ROOT / "docs" / "probe.md"  # never written: only its folder matters for resolving links
    links = linked_paths(doc, "[a](recipes.md#bagel-7b-mot) [b](https://x.org/y.md) [c](../README.md) [d](#top)")
    assert links == {("docs/recipes.md", "bagel-7b-mot"), ("README.md", ""), ("docs/probe.md", "top")}
    assert "bagel-7b-mot" in heading_anchors((REPO_ROOT / "docs" / "recipes.md").read_text())
