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


# Where a process starts, and only there, settings are read from the process environment (``Settings()``,
# ``Settings.from_env()`` without a mapping, the cached ``settings()``); everything below gets them passed in,
# so a caller's settings (a test's, a drain worker's) are the ones honoured. File -> functions ("*": all).
ENTRY_POINTS: dict[str, set[str]] = {
    "include/eventpipe/settings.py": {"*"},  # the model and its cached reader
    "include/eventpipe/cli.py": {"*"},  # `eventpipe ...` commands
    "include/eventpipe/ml/cli.py": {"*"},
    "include/eventpipe/archive/cli.py": {"*"},
    "include/eventpipe/migrate/cli.py": {"*"},
    "include/eventpipe/stateful/cli.py": {"*"},
    "include/eventpipe/results.py": {"emit"},  # where a CLI command writes its XCom result
    "include/eventpipe/archive/quiesce.py": {"day_is_closed"},  # sensor callable on the Airflow worker
    "include/eventpipe/orchestration/command.py": {"*"},  # DAG parse: the task environments
    "include/eventpipe/orchestration/tasks.py": {"*"},
    "include/eventpipe/orchestration/callbacks.py": {"*"},  # Airflow failure callback
    "plugins/eventpipe_plugin.py": {"*"},  # Airflow DAG-run listener
}


def _reads_process_settings(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in {"Settings", "settings"} and not call.args and not call.keywords
    if isinstance(func, ast.Attribute) and func.attr == "from_env":
        bare = not call.args and not call.keywords
        return isinstance(func.value, ast.Name) and func.value.id == "Settings" and bare
    return False


def _settings_reads(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of every read of the process's settings in ``path``."""
    found: list[tuple[str, int]] = []

    def walk(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and _reads_process_settings(child):
                found.append((function, child.lineno))
            walk(child, name)

    walk(ast.parse(path.read_text(), filename=str(path)), "<module>")
    return found


def test_settings_are_read_from_the_environment_only_at_entry_points() -> None:
    files = [*PIPELINE.rglob("*.py"), *(ROOT / "plugins").rglob("*.py"), *(ROOT / "dags").rglob("*.py")]
    offenders = []
    for path in files:
        rel = str(path.relative_to(ROOT))
        allowed = ENTRY_POINTS.get(rel, set())
        offenders += [
            f"{rel}:{line} in {fn}" for fn, line in _settings_reads(path) if "*" not in allowed and fn not in allowed
        ]
    assert offenders == []
    stale = [rel for rel in ENTRY_POINTS if not (ROOT / rel).is_file()]
    assert stale == []
