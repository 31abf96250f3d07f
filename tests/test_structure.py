"""The layering the code relies on: the pipeline package stands alone, the dev environment sits beside it.

Task images ship ``include/eventpipe`` only, so a pipeline module that imported ``devstack`` would work in a
checkout and fail in a pod. The cluster modules must not import each other in a circle either: a circle only
works while every import stays lazy, which is how the former ``csi`` <-> ``kubernetes`` pair was held together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "include" / "eventpipe"
DEVSTACK = ROOT / "devstack"
# The one place the pipeline's CLI names the dev environment: an optional hook, absent in task images.
DEVSTACK_HOOK = PIPELINE / "cli.py"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def test_pipeline_package_never_imports_the_devstack() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n == "devstack" or n.startswith("devstack."))
        for path in PIPELINE.rglob("*.py")
        if path != DEVSTACK_HOOK
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_devstack_python_lives_beside_its_go_and_java_parts() -> None:
    assert not (PIPELINE / "devstack").exists()
    assert (DEVSTACK / "__init__.py").is_file() and (DEVSTACK / "cluster" / "__init__.py").is_file()
    assert (DEVSTACK / "csi" / "go.mod").is_file() and (DEVSTACK / "java").is_dir()


@pytest.mark.parametrize("package", ["devstack", "devstack.cluster"])
def test_no_import_cycles(package: str) -> None:
    """Module-level and lazy imports alike: the import graph inside the dev environment is acyclic."""
    files = {_module_name(p, ROOT): p for p in DEVSTACK.rglob("*.py")}
    graph = {
        name: {n for n in _imports(path) if n in files and n != name}
        for name, path in files.items()
        if name.startswith(package)
    }
    done: set[str] = set()

    def visit(node: str, trail: tuple[str, ...]) -> None:
        if node in trail:
            cycle = (*trail[trail.index(node) :], node)
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, (*trail, node))
        done.add(node)

    for name in sorted(graph):
        visit(name, ())
