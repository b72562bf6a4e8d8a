"""The package import graph: no cycles, and imports point down the layer order docs/development.md draws.

A package is a top-level subpackage or module of tlkit (tlkit/model/, tlkit/io.py ...). Every `import tlkit.x` or
`from tlkit.x import ...` anywhere in a file counts, lazy imports inside functions included: a cycle through a lazy
import still ties the two packages together.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tlkit"
DOCS = ROOT / "docs" / "development.md"


def _package_of(module: str) -> str | None:
    """The tlkit package a dotted module name belongs to (None outside tlkit, or for a name that is no package, such
    as tlkit.__version__)."""
    parts = module.split(".")
    if parts[0] != "tlkit" or len(parts) < 2:
        return None
    name = parts[1]
    return name if (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file() else None


def import_graph() -> dict[str, set[str]]:
    """{package: the other tlkit packages its files import}."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("__init__.py", "__main__.py"):
            continue  # tlkit/__init__.py re-exports every public name lazily: it is the top, not a layer
        package = relative.parts[0].removesuffix(".py")
        graph[package]  # a package that imports nothing is still a node
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"tlkit.{a.name}" for a in node.names] if node.module == "tlkit" else [node.module]
            else:
                continue
            for name in names:
                target = _package_of(name)
                if target is not None and target != package:
                    graph[package].add(target)
    return dict(graph)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def documented_layers() -> list[list[str]]:
    """The layer picture of docs/development.md, top first: each row's packages (its left column)."""
    text = DOCS.read_text(encoding="utf-8")
    picture = text.split("Imports point downward only:", 1)[1].split("```", 2)[1]
    layers = []
    for line in picture.splitlines():
        if not line[:1].strip():
            continue  # a description's continuation
        paths = []
        for token in line.split():  # the row's paths come first, then its description
            if not token.startswith(("tlkit/", "scripts/")):
                break
            paths.append(token)
        if names := re.findall(r"tlkit/(\w+)", " ".join(paths)):
            layers.append(names)
    return layers


def test_the_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle between tlkit packages: {' -> '.join(cycle)}"


def test_imports_point_down_the_documented_layers():
    layers = documented_layers()
    row = {name: i for i, names in enumerate(layers) for name in names}
    graph = import_graph()
    assert set(graph) <= set(row), f"packages missing from the picture in docs/development.md: {set(graph) - set(row)}"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if row[b] <= row[a])
    assert not upward, f"imports that do not point down the layers of docs/development.md: {upward}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_documented_picture_lists_every_package_once():
    names = [name for row in documented_layers() for name in row]
    assert len(names) == len(set(names))
    assert set(names) == {p.stem for p in PACKAGE.iterdir() if (p.is_dir() and (p / "__init__.py").is_file())
                          or (p.suffix == ".py" and not p.name.startswith("__"))}


def strategy_kind_comparisons(root: Path = PACKAGE) -> list[str]:
    """Lines outside tlkit/model/strategies.py that compare a strategy kind with its name as a string literal
    ('path:line: text'). `kind == "auto"` counts, a bare == "auto" does not: accelerators and weights say auto too."""
    from tlkit.model.strategies import STRATEGY_CLASSES

    names = "|".join(re.escape(kind) for kind in STRATEGY_CLASSES)
    only_strategies = "|".join(re.escape(kind) for kind in STRATEGY_CLASSES if kind != "auto")
    patterns = [re.compile(rf"kind\s*[!=]=\s*[\"']({names})[\"']"),
                re.compile(rf"[\"']({names})[\"']\s*[!=]=\s*[\w.]*kind\b"),
                re.compile(rf"([!=]=|\bin\s*[(\[{{])[^#\n]*?[\"']({only_strategies})[\"']")]
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() == "model/strategies.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if any(p.search(line) for p in patterns):
                found.append(f"{path.relative_to(root.parent)}:{number}: {line.strip()}")
    return found


def test_nothing_outside_the_strategies_compares_a_strategy_kind_with_a_string():
    found = strategy_kind_comparisons()
    assert not found, "ask the strategy object (tlkit.model.strategies) instead:\n" + "\n".join(found)


def test_the_kind_comparison_finder_finds_each_spelling(tmp_path):
    package = tmp_path / "tlkit"
    (package / "model").mkdir(parents=True)
    (package / "model" / "strategies.py").write_text('if kind == "finetune":\n    pass\n', encoding="utf-8")
    (package / "run.py").write_text('a = kind != "auto"\nb = "lp_ft" == s.kind\nc = p.get("s", "x") == "finetune"\n'
                                    'd = k in ("linear_probe", "x")\ne = accelerator == "auto"\n', encoding="utf-8")
    assert [line.split(":")[1] for line in strategy_kind_comparisons(package)] == ["1", "2", "3", "4"]
