"""Layers stay honest: atlas_core imports no ray, hydra or omegaconf; only store/ imports zarr;
only pipelines/core/ray_ops.py imports ray (and pipelines/server/ray_serve.py, Ray Serve's);
pipelines' plumbing imports no stage or command;
and no two modules import each other, however indirectly (type-only imports count)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_BLOCKER = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('ray', 'hydra', 'omegaconf'):
            raise ImportError('blocked: ' + name)
        return None
sys.meta_path.insert(0, Block())
import pkgutil, importlib, atlas_core
mods = [m.name for m in pkgutil.walk_packages(atlas_core.__path__, 'atlas_core.')]
for m in mods:
    importlib.import_module(m)
bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'hydra', 'omegaconf')]
print(len(mods), 'modules', 'bad:', bad)
sys.exit(1 if bad else 0)
"""


def test_atlas_core_imports_without_ray_or_hydra() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _BLOCKER], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "modules bad: []" in out.stdout


def _imports(path: Path) -> set[str]:
    return {m.split(".")[0] for m in _modules_imported(path)}


def _modules_imported(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (functions and TYPE_CHECKING blocks too);
    ``from a.b import c`` counts as a.b and, when a.b.c is a module, a.b.c."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    files = sorted((ROOT / "atlas_core").rglob("*.py")) + sorted((ROOT / "pipelines").rglob("*.py"))
    mods = {_module_name(f): f for f in files}
    return {m: {x for x in _modules_imported(f) if x in mods and x != m} for m, f in mods.items()}


def test_no_import_circles() -> None:
    """Strongly connected components of the import graph of atlas_core and pipelines: every one
    is a single module (a package importing its own submodules is not a circle of modules)."""
    graph = _graph()
    assert len(graph) > 80
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 and not _package_and_members(comp):
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == []


def _package_and_members(comp: list[str]) -> bool:
    """A package whose __init__ imports its own modules, which import the package's names."""
    packages = [c for c in comp if all(o == c or o.startswith(c + ".") for o in comp)]
    return len(packages) == 1


def test_the_plumbing_imports_no_stage_and_no_command() -> None:
    above = ("pipelines.stages", "pipelines.commands", "pipelines.settings")
    bad = [
        m
        for m, deps in _graph().items()
        if m.startswith("pipelines.core") and any(x.startswith(above) for x in deps)
    ]
    assert bad == []
    stages = [m for m in _graph() if m.startswith("pipelines.stages.")]
    bad = [
        m
        for m in stages
        if any(x.startswith("pipelines.commands") or x == "pipelines.settings" for x in _graph()[m])
    ]
    assert len(stages) >= 7 and bad == []


def test_only_store_imports_zarr_and_no_library_module_imports_pipelines() -> None:
    offenders = []
    files = sorted((ROOT / "atlas_core").rglob("*.py"))
    assert len(files) > 20
    for f in files:
        names = _imports(f)
        if "zarr" in names and "store" not in f.relative_to(ROOT / "atlas_core").parts:
            offenders.append(f"{f}: zarr")
        if names & {"pipelines", "ray", "hydra", "omegaconf"}:
            offenders.append(f"{f}: {names & {'pipelines', 'ray', 'hydra', 'omegaconf'}}")
    assert offenders == []


def test_every_ray_call_is_in_ray_ops() -> None:
    files = sorted((ROOT / "pipelines").rglob("*.py"))
    assert len(files) > 20 and any(f.parent.name == "stages" for f in files)  # it walks subfolders
    users = [str(f.relative_to(ROOT)) for f in files if "ray" in _imports(f)]
    # and Ray Serve's deployment of the server app, whose decorators sit on the class they deploy
    assert users == ["pipelines/core/ray_ops.py", "pipelines/server/ray_serve.py"]


def test_functions_stay_short_enough_to_read_at_once() -> None:
    """STYLE.md: functions in atlas_core/ and pipelines/ stay under about 60 lines."""
    long = []
    for pkg in ("atlas_core", "pipelines"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = (node.end_lineno or node.lineno) - node.lineno + 1
                    if n > 60:
                        long.append(f"{path.relative_to(ROOT)}:{node.name} ({n} lines)")
    assert not long, long
