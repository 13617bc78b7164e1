"""The package's layout: stages that import only downwards, and modules, functions and classes of a size one
can read."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geoloc_lib"
STAGES = [
    "base",
    "geo",
    "data",
    "model",
    "evaluate",
    "run",
    "train",
    "inference",
    "viz",
    "serve",
]  # bottom to top
SIBLINGS = ("train", "inference")  # on one floor: neither imports the other
TOP = len(STAGES)  # the command lines (geoloc_lib/*.py) may import every stage


def _level(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in STAGES:
        return TOP
    return STAGES.index("train") if parts[1] in SIBLINGS else STAGES.index(parts[1])


def _runtime_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of every geoloc_lib import that runs (those under `if TYPE_CHECKING:` do not)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = (
                [node.module]
                if node.module != "geoloc_lib"
                else [f"geoloc_lib.{a.name}.x" for a in node.names]
            )
            found += [(node.lineno, n) for n in names if n.startswith("geoloc_lib")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("geoloc_lib")]
    return found


def upward_imports(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = "geoloc_lib." + ".".join(path.relative_to(root).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                problems.append(f"{module}:{node.lineno} uses a relative import")
        for line, imported in _runtime_imports(tree):
            if _level(imported) > _level(module):
                problems.append(f"{module}:{line} imports {imported}, a later stage")
            elif _level(imported) == _level(module) and imported.split(".")[1] != module.split(".")[1]:
                problems.append(f"{module}:{line} imports {imported}, its sibling")
    return problems


def test_stages_import_only_downwards():
    assert upward_imports() == []


def test_the_direction_test_finds_a_planted_upward_import(tmp_path):
    planted = tmp_path / "geoloc_lib"
    (planted / "data").mkdir(parents=True)
    (planted / "train").mkdir()
    (planted / "data" / "feature_cache.py").write_text("from geoloc_lib.run.spec import TrainConfig\n")
    (planted / "data" / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from geoloc_lib.model.encoders import X\n"
    )
    (planted / "train" / "loop.py").write_text("from geoloc_lib.data.feature_cache import CacheSpec\n")
    assert upward_imports(planted) == [
        "geoloc_lib.data.feature_cache:1 imports geoloc_lib.run.spec, a later stage"
    ]


def test_the_direction_test_finds_a_planted_import_between_train_and_inference(tmp_path):
    planted = tmp_path / "geoloc_lib"
    for stage in ("train", "inference", "run"):
        (planted / stage).mkdir(parents=True)
    (planted / "inference" / "predictor.py").write_text("from geoloc_lib.train.setup import build_training\n")
    (planted / "train" / "loop.py").write_text("from geoloc_lib.run.folder import RunFolder\n")
    (planted / "train" / "setup.py").write_text("from geoloc_lib.inference.predictor import Predictor\n")
    assert upward_imports(planted) == [
        "geoloc_lib.inference.predictor:1 imports geoloc_lib.train.setup, its sibling",
        "geoloc_lib.train.setup:1 imports geoloc_lib.inference.predictor, its sibling",
    ]


def test_every_module_sits_in_a_stage_that_says_what_it_owns():
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        assert len(parts) == 1 or parts[0] in STAGES, path  # no folder outside the stages
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and "Owns" in doc and "mport" in doc, stage  # what it owns, what it may import


# a tripwire, not a mould: code is split by meaning, and these catch only what no one can read at once
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_CLASS_LINES = 600, 80, 200
MAX_PARAMETERS = 8  # beyond it, the settings that travel together are a dataclass


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    return len([a for a in named if a.arg not in ("self", "cls")])


def _sizes():
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(PACKAGE.parent))
        yield name, "module", len(text.splitlines()), MAX_MODULE_LINES
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{name}:{node.name}", "function", node.end_lineno - node.lineno + 1, MAX_FUNCTION_LINES
                yield f"{name}:{node.name}", "parameters", _parameters(node), MAX_PARAMETERS
            elif isinstance(node, ast.ClassDef):
                yield f"{name}:{node.name}", "class", node.end_lineno - node.lineno + 1, MAX_CLASS_LINES


@pytest.mark.parametrize("kind", ["module", "function", "class", "parameters"])
def test_nothing_is_too_long_to_read(kind):
    too_long = [
        f"{name} ({lines} lines)" for name, k, lines, limit in _sizes() if k == kind and lines > limit
    ]
    assert too_long == []


def test_a_runs_settings_load_without_torch():
    """The command lines parse and check settings before anything heavy loads: the settings, and the stages'
    settings classes they take their defaults from, import no torch."""
    import subprocess
    import sys

    code = (
        "import sys, geoloc_lib.run.spec; print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"
