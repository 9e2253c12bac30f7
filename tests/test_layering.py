"""Layers stay honest: atlas_core imports no ray, hydra or omegaconf; only store/ imports zarr."""

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
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


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
    users = [f.name for f in sorted((ROOT / "pipelines").glob("*.py")) if "ray" in _imports(f)]
    assert users == ["ray_ops.py"]


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
