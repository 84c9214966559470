"""Imports run one way, experiments -> benchmarks -> models -> datamodules, with no cycle between modules; the
command line's parser is built without torch.

Every `import` / `from ... import` statement of the four packages counts, also those inside functions (a lazy
import is still a dependency; it only defers the cost), and so do the verb modules `experiments/cli.py` names in
its VERB_MODULES table (imported by name).
"""
import ast
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["datamodules", "models", "benchmarks", "experiments"]  # lowest first: a package imports only at or below


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in LAYERS:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports: `from a.b import c` counts a.b.c when that is a module, else a.b."""
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    if path == REPO_ROOT / "experiments" / "cli.py":
        from experiments.cli import VERB_MODULES

        found.update(VERB_MODULES.values())
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, modules) - {name} for name, path in modules.items()}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_imports_point_down_the_layers():
    upward = sorted(
        (module, target)
        for module, targets in import_graph().items()
        for target in targets
        if layer(target) > layer(module)
    )
    assert not upward, "imports against experiments -> benchmarks -> models -> datamodules: " + ", ".join(
        f"{module} -> {target}" for module, target in upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    graph["experiments.run"] = graph["experiments.run"] | {"experiments.cli"}  # cli -> run already (VERB_MODULES)
    assert any({"experiments.cli", "experiments.run"} <= set(cycle) for cycle in find_cycles(graph))


def test_the_command_line_parser_is_built_without_torch():
    """`maskbench --help` and every verb's --help must not pay for torch, lightning or the models (seconds)."""
    code = ("import sys, experiments.cli as cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'lightning', 'timm', 'models') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
