"""Every module the container images import is installed by the images' pip lines.

The modules come from our code's imports (lazy ones included) and, for the submodules of other
libraries we name (``slack_bolt.adapter.socket_mode.websockets``), from what those submodules
import at module level: that is how `websockets` reaches Socket Mode. The installed set is the
transitive closure, over the installed distributions' metadata, of the requirements in
pyproject.toml with the extras each Dockerfile's ``pip install ".[...]"`` line names."""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import importlib.util
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
OURS = ("bot", "plugins", "trainer", "serving")
# Only the test kit (a pytest plugin) imports pytest, psycopg directly and websockets' server.
NOT_SHIPPED = ("bot/testkit",)
# The bot image never trains on several GPUs: `accelerate launch` runs in the worker image only.
WORKER_ONLY = {"accelerate"}
# A postgresql:// URL makes SQLAlchemy import the psycopg driver (the images use PostgreSQL).
DRIVERS = {"psycopg"}


def _imports(tree: ast.AST, *, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only and isinstance(tree, ast.Module) else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _third_party(name: str) -> bool:
    top = name.split(".")[0]
    return top not in sys.stdlib_module_names and top not in OURS and top != "__future__"


def _source(module: str) -> Path | None:
    """The file of ``module`` without importing it or its parent packages."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level lookup imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        base = Path(location).joinpath(*rest)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _module_imports(module: str) -> set[str]:
    source = _source(module)
    if source is None:
        return set()
    return _imports(ast.parse(source.read_text()), top_level_only=True)


@functools.cache
def needed_modules() -> frozenset[str]:
    """Top-level modules the shipped code imports, following named third-party submodules."""
    named: set[str] = set()
    for package in OURS:
        for path in (ROOT / package).rglob("*.py"):
            if path.relative_to(ROOT).as_posix().startswith(NOT_SHIPPED):
                continue
            tree = ast.parse(path.read_text())
            named |= {m for m in _imports(tree, top_level_only=False) if _third_party(m)}
    tops = {m.split(".")[0] for m in named}
    todo = [m for m in named if "." in m]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imported in _module_imports(module):
            if not _third_party(imported):
                continue
            tops.add(imported.split(".")[0])
            if "." in imported:  # a library's own submodule chain, not a whole package
                todo.append(imported)
    return frozenset(tops)


def image_requirements(dockerfile: str) -> tuple[set[str], list[str]]:
    """The extras of ``pip install ".[...]"`` and the other requirements on that line."""
    text = (ROOT / "deploy" / dockerfile).read_text()
    line = re.search(r'pip install "\.\[([^\]]*)\]"([^\n\\]*)', text)
    assert line, f'{dockerfile} installs the project with pip install ".[extras]"'
    extras = {e.strip() for e in line.group(1).split(",") if e.strip()}
    others = re.findall(r'"([^"]+)"', line.group(2))
    return extras, others


def installed_closure(extras: set[str], others: list[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        roots += [Requirement(r) for r in project["optional-dependencies"][extra]]
    roots += [Requirement(r) for r in others]
    closure: set[str] = set()
    todo = [(r, frozenset[str]()) for r in roots]
    while todo:
        req, wanted = todo.pop()
        env_extras = wanted or frozenset({""})
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in env_extras):
            continue
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in closure:
            continue
        closure.add(key)
        closure.add(name)
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue  # not installed here, so it cannot provide any module we look for
        todo += [(Requirement(r), frozenset(req.extras)) for r in requires]
    return {c for c in closure if "[" not in c}


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    return md.packages_distributions()


def providers(module: str) -> set[str]:
    return {canonicalize_name(d) for d in _distributions().get(module, [])}


@pytest.mark.parametrize(
    ("dockerfile", "excluded"),
    [("Dockerfile.bot", WORKER_ONLY), ("Dockerfile.worker", set())],
)
def test_image_installs_every_module_it_imports(dockerfile: str, excluded: set[str]) -> None:
    extras, others = image_requirements(dockerfile)
    installed = installed_closure(extras, others)
    needed = (needed_modules() | DRIVERS) - excluded
    missing = {}
    for module in sorted(needed):
        dists = providers(module)
        assert dists, f"{module} is imported but no installed distribution provides it"
        if not dists & installed:
            missing[module] = sorted(dists)
    assert not missing, f"{dockerfile} does not install: {missing}"


def test_socket_mode_needs_websockets_and_the_bot_image_has_it() -> None:
    assert "websockets" in needed_modules()
    extras, others = image_requirements("Dockerfile.bot")
    assert "websockets" in installed_closure(extras, others)


def test_plain_pip_install_runs_socket_mode() -> None:
    """``pip install brandbot`` (no extras) must be enough for `brandbot run` in Socket Mode."""
    installed = installed_closure(set(), [])
    for module in ("websockets", "slack_bolt", "aiohttp", "uvicorn"):
        assert providers(module) & installed, module
