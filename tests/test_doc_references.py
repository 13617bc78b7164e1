"""Docs that cannot drift: every file path and every name of the library that the README, the docs, the notebooks'
text and the code's docstrings and comments put in backticks exists, and each stage's door sign names every
module it owns."""

import ast
import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "geoloc_lib"
STAGES = ("base", "geo", "data", "model", "evaluate", "run", "train", "inference", "viz", "serve")
FILE_SUFFIXES = (".py", ".md", ".ipynb", ".toml", ".yml", ".yaml", ".geojson", ".cfg", ".sh")
# a word ending in one of these is a file's name (losses.csv), not a dotted name
FILE_NAME_ENDINGS = (
    *FILE_SUFFIXES,
    ".csv",
    ".json",
    ".txt",
    ".pt",
    ".pth",
    ".png",
    ".html",
    ".jpg",
    ".tar",
    ".lock",
)
REPO_FOLDERS = ("geoloc_lib", "tools", "tests", "docs", "notebooks", "data", ".ci", *STAGES)
# dotted words that are not the library's: other libraries, and variables the docs name (cfg.phase)
OTHER_NAMESPACES = {
    *("torch", "torchvision", "np", "pd", "nn", "os", "sys", "json", "math", "shapely", "folium", "sklearn"),
    *("open_clip", "matplotlib", "ipywidgets", "papermill", "pytest", "fcntl", "huggingface_hub", "timm"),
    *("cfg", "args", "self", "config", "spec", "model", "heads", "cells", "source", "dataset", "checkpoint"),
}
# written by the workbench or the user, or not a path of this repository
NOT_REPO_PATHS = ("runs/", "data/demo", "data/my_", "notebooks/out", "out", "~", "/", "..", "http", "../")


def _texts() -> list[tuple[str, str]]:
    """(where, text) of the README, the docs, the notebooks' markdown, and the docstrings and comments of the
    library and tools."""
    found = [
        (p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8"))
        for p in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
    ]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        comments = [line.split("#", 1)[1] for line in code.splitlines() if "#" in line]
        found.append((path.relative_to(ROOT).as_posix(), "\n".join([text, *comments])))
    for path in (ROOT / "pyproject.toml", ROOT / "Makefile", ROOT / "environment.yml", ROOT / ".ci" / "run"):
        comments = [
            line.split("#", 1)[1] for line in path.read_text(encoding="utf-8").splitlines() if "#" in line
        ]
        found.append((path.relative_to(ROOT).as_posix(), "\n".join(comments)))
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "tools").rglob("*.py")]):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docs = [ast.get_docstring(n) or "" for n in ast.walk(tree) if isinstance(n, nodes)]
        comments = [
            line.split("#", 1)[1]
            for line in source.splitlines()
            if line.lstrip().startswith("#") or "  # " in line
        ]
        found.append((path.relative_to(ROOT).as_posix(), "\n".join(docs + comments)))
    return found


def _package_names() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({module stem: dotted modules}, {class or function name: dotted modules defining it}) of the library."""
    modules, defined = {}, {}
    for path in PACKAGE.rglob("*.py"):
        dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules.setdefault(path.stem, []).append(dotted)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef):
                defined.setdefault(node.name, []).append(dotted)
    return modules, defined


def _resolves(module: str, attributes: list[str]) -> bool:
    try:
        thing = importlib.import_module(module)
    except ImportError:
        return False
    for name in attributes:
        if isinstance(thing, type) and name in getattr(thing, "__dataclass_fields__", {}):
            return True  # a dataclass field without a default is no class attribute
        if not hasattr(thing, name):
            return False
        thing = getattr(thing, name)
    return True


def missing_name(span: str, modules: dict, defined: dict) -> bool:
    """A dotted name of the library (geoloc_lib.x.y, stage.module.name, module.name, Class.attribute) that does
    not resolve; other dotted words (cfg.phase, torch.load) are not the library's and pass."""
    parts = span.split(".")
    head, rest = parts[0], parts[1:]
    if head == "geoloc_lib":
        for cut in range(len(parts), 1, -1):
            if _resolves(".".join(parts[:cut]), parts[cut:]):
                return False
        return True
    if head in STAGES and f"geoloc_lib.{head}.{rest[0]}" in {m for ms in modules.values() for m in ms}:
        return not _resolves(f"geoloc_lib.{head}.{rest[0]}", rest[1:])
    if head in modules:
        return not any(_resolves(m, rest) for m in modules[head])
    if head in defined:
        return not any(_resolves(m, parts) for m in defined[head])
    # a lower-case head that is no module of the library: an old module's name (fit.train_one_epoch), unless it
    # is another library's or the usual name of a variable
    return head.islower() and head not in OTHER_NAMESPACES


def missing_path(span: str, where: str) -> bool:
    """A path of this repository (tools/demo.py, train/loop.py for geoloc_lib/train/loop.py, docs/trust.md) that
    does not exist; paths the workbench writes (runs/...) and patterns (<run>, *) pass."""
    path = re.sub(r"(:\d+(-\d+)?|#.*)$", "", span)
    if any(c in path for c in "<>{}*$ ") or path.startswith(NOT_REPO_PATHS) or "/" not in path:
        return False
    if not (path.split("/")[0] in REPO_FOLDERS or path.endswith(FILE_SUFFIXES)):
        return False
    if path.startswith("data/") and not path.endswith(FILE_SUFFIXES):
        return False  # data folders are made by the demo or by ingest
    bases = (ROOT, PACKAGE, ROOT / Path(where).parent, PACKAGE / "resources")
    # a notebook or a module named without its suffix; a module's attribute (train/setup.parameter_groups)
    stem, _, attribute = path.rpartition(".") if not path.endswith(FILE_NAME_ENDINGS) else (path, "", "")
    for base in bases:
        if any((base / f"{path}{suffix}").exists() for suffix in ("", ".py", ".ipynb")):
            return False
        module = base / f"{stem}.py"
        if attribute and module.is_file() and module.is_relative_to(PACKAGE):
            dotted = ".".join(module.relative_to(ROOT).with_suffix("").parts)
            if _resolves(dotted, attribute.split(".")):
                return False
    return True


def stale_references(texts: list[tuple[str, str]]) -> list[str]:
    modules, defined = _package_names()
    stale = []
    for where, text in texts:
        # a path of the repository written without backticks (see geoloc_lib/run/spec.py) is checked too
        for path in sorted(
            set(re.findall(r"(?<![\w/.`])((?:geoloc_lib|tools|docs|notebooks|\.ci)/[\w/.-]*\w)", text))
        ):
            if missing_path(path, where):
                stale.append(f"{where}: {path}")
        for span in sorted(set(re.findall(r"`([^`\n]+)`", text))):
            span = span.strip().removesuffix("()")
            if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", span) and not span.endswith(FILE_NAME_ENDINGS):
                if missing_name(span, modules, defined):
                    stale.append(f"{where}: `{span}`")
            elif missing_path(span, where):
                stale.append(f"{where}: `{span}`")
    return stale


def test_every_path_and_name_the_docs_give_exists():
    assert stale_references(_texts()) == []


@pytest.mark.parametrize(
    "planted",
    [
        "`geoloc_lib/train/run_folder.py`",  # a module that moved
        "`fit.train_one_epoch`",  # a function that never was
        "`geoloc_lib.train.from_config.check_options`",  # a module that is gone
        "`train/config.py`",  # a stage-relative path
        "`TrainConfig.no_such_setting`",
        "`run.folder.open_everything`",
        "`features.clean_features`",  # an old module's name
        "see geoloc_lib/config.py",  # a path without backticks
    ],
)
def test_the_reference_test_finds_a_planted_stale_name(planted):
    assert stale_references([("docs/planted.md", f"See {planted} for more.")]) != []  # and it names it
    assert (
        stale_references(
            [("docs/planted.md", "See `run/folder.py`, `loop.fit` and `TrainConfig.from_dict`.")]
        )
        == []
    )


def test_every_stage_names_every_module_it_owns():
    for stage in STAGES:
        sign = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8")))
        named = {span.split(".")[0] for span in re.findall(r"`([^`\n]+)`", sign)}
        owned = {p.stem for p in (PACKAGE / stage).glob("*.py") if p.stem != "__init__"}
        assert owned - named == set(), f"{stage}/__init__.py does not name {sorted(owned - named)}"
