"""The package's import graph: no cycle (deferred imports included), and ``kernels/``
imports nothing from the layers above it."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "numba_adamax"


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name, path, modules):
    """The package modules ``name`` imports anywhere in its body (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    done, path = set(), []

    def visit(node):
        if node in path:
            cycle = path[path.index(node):] + [node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        path.append(node)
        for target in sorted(graph[node]):
            visit(target)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def test_kernels_import_nothing_above_them():
    graph = _graph()
    kernels = [name for name in graph if name.startswith("numba_adamax.kernels")]
    assert "numba_adamax.kernels.cpu" in kernels and "numba_adamax.kernels.cuda" in kernels
    for name in kernels:
        above = sorted(t for t in graph[name] if not t.startswith("numba_adamax.kernels"))
        assert not above, f"{name} imports {above}"


def test_backends_import_only_kernels_and_the_device_probe():
    graph = _graph()
    allowed = ("numba_adamax.backends", "numba_adamax.kernels", "numba_adamax._devices")
    for name in (n for n in graph if n.startswith("numba_adamax.backends")):
        above = sorted(t for t in graph[name] if not t.startswith(allowed))
        assert not above, f"{name} imports {above}"


def test_the_graph_sees_deferred_and_relative_imports():
    graph = _graph()
    assert "numba_adamax.backends.cuda" in graph["numba_adamax.backends"]  # inside a function
    assert "numba_adamax.kernels.config" in graph["numba_adamax.backends.cpu"]
    assert "numba_adamax._apply" in graph["numba_adamax.functional"]
