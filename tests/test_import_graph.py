"""No import circles among the project's modules.

The graph is read from the source with ``ast``, not by importing: every ``import`` and
``from ... import`` statement counts wherever it sits (module level, inside a function, under a
condition), and so does ``importlib.import_module("a.constant.name")``. A lazy import inside a
function that only dodges a circle is still a circle: the shared code belongs in one module that
both sides import.

An edge ``a -> b`` means module ``a`` names module ``b`` in an import. Importing ``pkg.mod``
also runs ``pkg/__init__.py`` first, but that implicit edge is not counted: a package that
re-exports its submodules would otherwise be a circle with each of them. ``from pkg import
name`` is an edge to ``pkg.name`` when that is a module of ours, else to ``pkg`` itself.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the project's import roots (pyproject's packages, bench/ and tools/ run as modules, train.py)
ROOTS = ("gpt", "gpt_kernels", "bench", "tools", "train.py")


def project_modules(repo=REPO):
    """Map each dotted module name of ours to its file."""
    modules = {}
    for root in ROOTS:
        path = repo / root
        if not path.exists():
            continue
        files = [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
        for file in files:
            parts = list(file.relative_to(repo).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = file
    return modules


def _absolute(module, file, level, name):
    """The absolute name a relative ``from`` import in ``module`` (at ``file``) refers to."""
    if level == 0:
        return name
    package = module.split(".") if file.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _targets(node, module, file):
    """The dotted names one AST node imports (empty for any other node)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        source = _absolute(module, file, node.level, node.module)
        return [source] + [f"{source}.{alias.name}" for alias in node.names]
    if (isinstance(node, ast.Call) and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "import_module":
            return [node.args[0].value]
    return []


def import_graph(modules):
    """``{module: set of our modules it imports}``, over the whole body of each file."""
    graph = {}
    for module, file in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), filename=str(file))):
            targets = _targets(node, module, file)
            if isinstance(node, ast.ImportFrom):
                # `from pkg import x`: x is a submodule of ours, or a name defined in pkg
                source, names = targets[0], targets[1:]
                submodules = [name for name in names if name in modules]
                targets = submodules if len(submodules) == len(names) else [source] + submodules
            edges.update(name for name in targets if name in modules and name != module)
        graph[module] = edges
    return graph


def strongly_connected(graph):
    """The strongly connected components of more than one module (each a set), by Tarjan's
    algorithm, iterative so that no recursion limit applies: modules that import each other,
    directly or through others."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        return node, iter(sorted(graph[node]))

    for start in sorted(graph):
        if start in index:
            continue
        work = [visit(start)]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    work.append(visit(child))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:  # node is the root of a component: pop it off
                component, member = set(), None
                while member != node:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                if len(component) > 1:
                    components.append(component)
    return components


def find_cycles(graph):
    """One circle per strongly connected component (a list of modules, first == last)."""
    return [_cycle_in(graph, component) for component in strongly_connected(graph)]


def _cycle_in(graph, component):
    """A shortest circle through the component's first module, by breadth-first search."""
    start = min(component)
    previous = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]  # start, ..., node, start
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no circle found in the component {sorted(component)}")


def test_graph_sees_every_kind_of_import(tmp_path):
    """The reader counts module-level, function-level, relative and import_module imports."""
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "__init__.py").write_text("from gpt.a import f\n")
    (tmp_path / "gpt" / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (tmp_path / "gpt" / "b.py").write_text(
        "import importlib\n\ndef g():\n    return importlib.import_module('gpt.c')\n")
    (tmp_path / "gpt" / "c.py").write_text("from gpt.a import f\nfrom gpt import d\n")
    (tmp_path / "gpt" / "d.py").write_text("X = 1\n")
    (tmp_path / "gpt" / "e.py").write_text("import os\nfrom gpt import f\n")  # a name: the package
    graph = import_graph(project_modules(tmp_path))
    assert graph == {"gpt": {"gpt.a"}, "gpt.a": {"gpt.b"}, "gpt.b": {"gpt.c"},
                     "gpt.c": {"gpt.a", "gpt.d"}, "gpt.d": set(), "gpt.e": {"gpt"}}
    assert find_cycles(graph) == [["gpt.a", "gpt.b", "gpt.c", "gpt.a"]]


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
    ({"a": {"b", "x"}, "b": {"c"}, "c": {"a"}, "x": {"y"}, "y": {"x"}},
     [["x", "y", "x"], ["a", "b", "c", "a"]]),
])
def test_find_cycles(graph, expected):
    assert sorted(find_cycles(graph)) == sorted(expected)


def test_no_import_circles():
    modules = project_modules()
    assert "gpt.model" in modules and "train" in modules  # the roots were found
    graph = import_graph(modules)
    components = strongly_connected(graph)
    assert not components, "import circles (a -> b: a imports b):\n" + "\n".join(
        f"  {' -> '.join(_cycle_in(graph, c))}   (in a circle together: {', '.join(sorted(c))})"
        for c in components)
