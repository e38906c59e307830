"""The package's layout, read from its source with ``ast``: layers that point one way.

``python tests/test_layout.py`` prints the report (the core's size, the largest files, the import
graph); the tests below fail when an import cycle appears, when the learner's core or the
trainers import the speed engine or the widgets, when a module imports another module's private
name, or when the learner's core grows past 1,000 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vaelib"
#: The modules notebooks 01-06 send a learner to: at most 1,000 lines together, docstrings included.
LEARNERS_CORE = ("vaelib.kl", "vaelib.reparam", "vaelib.bounds", "vaelib.models")
CORE_LIMIT = 1000
#: Modules that sit on top and may use the speed engine: the commands and the shipped models (whose
#: network, TunedVAE, is the speed recipe's).
TOP = ("vaelib.checkpoints", "vaelib.cli", "vaelib.evaluate", "vaelib.shipped")
SUBPACKAGES = ("vaelib.speed", "vaelib.widgets")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``: a script's entry point, not a dependency of the module."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _nodes(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if _is_main_guard(node):
            continue
        yield node
        yield from _nodes(node)


def imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported vaelib module, names taken from it) for every import in the file, the lazy ones too."""
    is_package = path.name == "__init__.py"
    found = []
    for node in _nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "vaelib"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vaelib":
                continue
            names = [a.name for a in node.names]
            if node.module is None:  # from . import kl, bounds: each name is a module
                found += [(f"{target}.{n}", []) for n in names]
            else:
                found.append((target, names))
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        graph[name] = {target for target, _ in imports(name, path) if target in known and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, found by depth-first search (each reported once, from its smallest module)."""
    found = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == path[0]:
                found.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def line_count(module: str) -> int:
    return len(modules()[module].read_text().splitlines())


def in_subpackage(module: str) -> str | None:
    return next((p for p in SUBPACKAGES if module == p or module.startswith(p + ".")), None)


# --------------------------------------------------------------------------- tests
def test_there_is_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_only_the_top_imports_the_speed_engine_and_nothing_but_notebooks_imports_the_widgets():
    graph = import_graph()
    wrong = []
    for module, targets in graph.items():
        home = in_subpackage(module)
        for target in targets:
            sub = in_subpackage(target)
            if sub is None or sub == home:
                continue
            if sub == "vaelib.speed" and module in TOP:
                continue
            wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_speed_engine_imports_the_core():
    assert "vaelib.models" in set().union(*(t for m, t in import_graph().items() if in_subpackage(m) == "vaelib.speed"))


def test_no_module_imports_a_private_name_except_from_the_helpers_module():
    borrowed = [f"{name} takes {n} from {target}"
                for name, path in modules().items()
                for target, names in imports(name, path)
                for n in names
                if n.startswith("_") and target != "vaelib._helpers"]
    assert borrowed == []


def test_the_learners_core_reads_in_one_sitting():
    total = sum(line_count(m) for m in LEARNERS_CORE)
    assert total <= CORE_LIMIT, {m: line_count(m) for m in LEARNERS_CORE}


def test_public_exceptions_live_in_a_public_module():
    import vaelib.errors

    for name in ("ShapeError", "NonFiniteError", "ProbabilityError", "NotPositiveDefiniteError",
                 "NotLowerTriangularError", "TrainingDiverged", "VaelibInputError"):
        assert getattr(vaelib.errors, name).__module__ == "vaelib.errors"


def report() -> str:
    graph = import_graph()
    sizes = sorted(((line_count(m), m) for m in modules()), reverse=True)
    parts = ", ".join(f"{m.split('.')[-1]} {line_count(m)}" for m in LEARNERS_CORE)
    lines = [f"learner's core: {sum(line_count(m) for m in LEARNERS_CORE)} lines ({parts}), limit {CORE_LIMIT}",
             f"all of vaelib: {sum(n for n, _ in sizes)} lines in {len(sizes)} files",
             "largest files: " + ", ".join(f"{m} {n}" for n, m in sizes[:5]),
             f"import cycles: {cycles(graph) or 'none'}",
             "imports (module -> vaelib modules it imports):"]
    lines += [f"  {m} -> {', '.join(sorted(t)) or '-'}" for m, t in sorted(graph.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
