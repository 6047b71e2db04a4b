"""The package's layers point down only (docs/architecture.md).

Bottom to top: the core (flow, losses, reward maps, advantages, metrics, the model protocol and the text conventions
every model shares) -> the models that implement the protocol -> the self-judge -> stage 1 (rollouts) -> stage 2 and
the rounds (trainer, pipeline) -> the interfaces (evaluation, commands). A module may import its own layer and the
layers below, never one above; the shapes world is a plug-in, registered through an entry point: it may use any
layer, and no layer names it. Every import counts, those inside functions too.
"""

import ast
from pathlib import Path

from .helpers import REPO_ROOT


LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "core",
        (
            "trl_srum.flow",
            "trl_srum.loss",
            "trl_srum.reward_map",
            "trl_srum.advantage",
            "trl_srum.metrics",
            "trl_srum.protocol",
            "trl_srum.prompt_text",
            "trl_srum.object_rules",
            "trl_srum.plugins",
        ),
    ),
    ("models", ("trl_srum.models",)),
    ("judge", ("trl_srum.judge",)),
    ("rollout", ("trl_srum.rollout",)),
    (
        "training",
        (
            "trl_srum.collator",
            "trl_srum.srum_config",
            "trl_srum.srum_trainer",
            "trl_srum.model_card",
            "trl_srum.pipeline",
        ),
    ),
    ("interfaces", ("trl_srum.eval", "trl_srum.scripts", "trl_srum.cli")),
)
PLUGINS = ("trl_srum.shapes",)
# The package's own __init__ only re-exports, lazily, names of the layers (any of them).
TOP_LEVEL = "trl_srum"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = REPO_ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, module: str, is_package: bool, top_level_only: bool = False) -> set[str]:
    """Every trl_srum module `source` imports (only the imports run when it loads, with `top_level_only`), relative
    imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            # `from trl_srum import pipeline` imports a module, not a name
            found.update(f"{prefix}.{alias.name}" for alias in node.names if is_module(f"{prefix}.{alias.name}"))
    return {name for name in found if name == TOP_LEVEL or name.startswith(TOP_LEVEL + ".")}


def layer_of(module: str) -> int | None:
    """The layer's index (bottom 0), len(LAYERS) for a plug-in, None for the package itself or a name that is not a
    module (e.g. a class imported from a package)."""
    if module.startswith(PLUGINS) and (module in PLUGINS or module.startswith(tuple(p + "." for p in PLUGINS))):
        return len(LAYERS)
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    return None


def upward_imports(module: str, source: str, is_package: bool) -> list[str]:
    own = layer_of(module)
    if own is None:
        return []
    problems = []
    for target in sorted(imported_modules(source, module, is_package)):
        layer = layer_of(target)
        if layer is not None and layer > own:
            name = "a plug-in" if layer == len(LAYERS) else f"layer '{LAYERS[layer][0]}'"
            below = "a plug-in" if own == len(LAYERS) else f"layer '{LAYERS[own][0]}'"
            problems.append(f"{module} ({below}) imports {target} ({name})")
    return problems


def test_every_module_of_the_package_has_a_layer():
    modules = [module_name(path) for path in REPO_ROOT.glob("trl_srum/**/*.py")]
    homeless = [m for m in modules if m != TOP_LEVEL and layer_of(m) is None]
    assert not homeless, f"modules in no layer of tests/test_architecture.py (add them): {homeless}"


def test_layers_only_point_down():
    problems = []
    for path in sorted(REPO_ROOT.glob("trl_srum/**/*.py")):
        module = module_name(path)
        problems += upward_imports(module, path.read_text(), path.name == "__init__.py")
    assert not problems, "imports against the layering (docs/architecture.md):\n" + "\n".join(problems)


def test_the_check_catches_an_upward_import_and_a_plugin_import():
    # The guard itself: a model importing the judge, and stage 1 importing the shapes world, are both caught.
    assert upward_imports("trl_srum.models.bagel.modeling_bagel", "from ...judge.parsing import x", False)
    assert upward_imports("trl_srum.rollout.prompts", "def f():\n    from ..shapes import describe", False)
    assert not upward_imports("trl_srum.pipeline", "from .rollout import RolloutConfig", False)
    assert not upward_imports("trl_srum.shapes.judge", "from ..judge.scoring import Judgement", False)


def import_cycles(graph: dict[str, set[str]]) -> list[str]:
    """The cycles of an import graph, except those inside one package (a package importing its own submodules, which
    import the package's other names, is how packages work)."""
    cycles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return [" -> ".join(c) for c in cycles if not all(part.startswith(c[0] + ".") or part == c[0] for part in c)]


def test_no_module_imports_itself_back_when_it_loads():
    # Deferred imports inside functions are not part of a module's loading, so they make no cycle.
    paths = {module_name(path): path for path in REPO_ROOT.glob("trl_srum/**/*.py")}
    graph = {
        module: {
            target
            for target in imported_modules(path.read_text(), module, path.name == "__init__.py", top_level_only=True)
            if target in paths and target != module
        }
        for module, path in paths.items()
    }
    assert graph["trl_srum.pipeline"] and graph["trl_srum.srum_trainer"]  # the graph is not empty by mistake
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_check_catches_a_cycle_between_modules():
    graph = {"a.x": {"b.y"}, "b.y": {"c.z"}, "c.z": {"a.x"}, "p": {"p.q"}, "p.q": {"p"}}
    assert import_cycles(graph) == ["a.x -> b.y -> c.z -> a.x"]


def absolute_self_imports(source: str) -> list[int]:
    """Lines where package code imports `trl_srum` by its absolute name (one style package-wide: relative)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if any(name == TOP_LEVEL or name.startswith(TOP_LEVEL + ".") for name in names):
            found.append(node.lineno)
    return sorted(found)


def test_the_package_imports_itself_relatively():
    problems = [
        f"{path.relative_to(REPO_ROOT)}:{line}"
        for path in sorted(REPO_ROOT.glob("trl_srum/**/*.py"))
        for line in absolute_self_imports(path.read_text())
    ]
    assert not problems, "absolute imports of trl_srum inside the package (use relative ones):\n" + "\n".join(problems)


def test_the_import_style_check_sees_absolute_imports():
    assert absolute_self_imports("def f():\n    from trl_srum.loss import srum_loss\nimport trl_srum.flow") == [2, 3]
    assert absolute_self_imports("from .loss import srum_loss\nfrom torch import nn") == []
