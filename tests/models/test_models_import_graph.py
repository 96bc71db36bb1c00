"""The core package ``skurec`` has a one-way import graph: no module imports itself back through others.

Every ``import`` / ``from ... import`` statement anywhere in a module (top level or inside a function) counts as an
edge; relative imports are resolved; ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else
to ``pkg``. Python's implicit "importing a submodule first runs its package's ``__init__``" is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "skurec"


def module_files(package_dir: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package (``__init__`` -> the package name)."""
    out: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def import_edges(module: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``module`` (file ``path``) imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    edges: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name:
                    edges.add(name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    edges.add(full)
                elif base in modules:
                    edges.add(base)
    edges.discard(module)
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


def package_graph() -> dict[str, set[str]]:
    files = module_files(ROOT / PACKAGE, PACKAGE)
    names = set(files)
    return {m: import_edges(m, p, names) for m, p in files.items()}


def test_the_core_package_has_no_import_cycle() -> None:
    graph = package_graph()
    assert "skurec.models.serialization" in graph and len(graph) > 20  # it really parsed the whole package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


#: stage packages and the packages each may not import: the cart's ``serving`` sits on top of ``deployment``, the
#: models below both, the stand-alone edge runner imports none of them
FORBIDDEN = {
    "skurec.deployment": ("skurec.serving",),
    "skurec.models": ("skurec.deployment", "skurec.serving", "skurec.embeddings", "skurec.catalogue", "skurec.edge"),
    "skurec.edge": ("skurec.models", "skurec.deployment", "skurec.serving", "skurec.embeddings", "skurec.encoders"),
}


def test_no_arrow_runs_up_between_stage_packages() -> None:
    graph = package_graph()
    bad = [
        f"{m} imports {t}"
        for m, targets in graph.items()
        for pkg, banned in FORBIDDEN.items()
        if m == pkg or m.startswith(pkg + ".")
        for t in targets
        if any(t == b or t.startswith(b + ".") for b in banned)
    ]
    assert not bad, bad


def test_models_leaves_and_top() -> None:
    graph = package_graph()
    for leaf in ("skurec.models._common", "skurec.models.serialization"):
        inside = {m for m in graph[leaf] if m.startswith("skurec.")}
        assert not inside, f"{leaf} must be a leaf of the import graph, imports {sorted(inside)}"
    importers = sorted(m for m, e in graph.items() if "skurec.models.registry" in e)
    assert importers == ["skurec.models"], f"only the package re-exports the registry, got {importers}"


def test_no_model_imports_a_private_name_of_a_sibling() -> None:
    files = module_files(ROOT / PACKAGE / "models", "skurec.models")
    bad = []
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level and node.module not in (None, "_common"):
                bad += [f"{module}: from .{node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
    assert not bad, bad


@pytest.mark.parametrize(
    "graph, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
    ],
)
def test_the_cycle_finder_itself(graph: dict[str, set[str]], cycle: bool) -> None:
    found = find_cycle(graph)
    assert (found is not None) == cycle
    if found:
        assert found[0] == found[-1] and all(b in graph[a] for a, b in zip(found, found[1:]))


def test_relative_imports_resolve_to_the_named_module(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .sub import mod\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("def f():\n    from .. import other\n    from .sibling import thing\n")
    (pkg / "sub" / "sibling.py").write_text("thing = 1\n")
    (pkg / "other.py").write_text("import pkg.sub.mod\n")
    files = module_files(pkg, "pkg")
    names = set(files)
    graph = {m: import_edges(m, p, names) for m, p in files.items()}
    assert graph["pkg"] == {"pkg.sub.mod"}
    assert graph["pkg.sub.mod"] == {"pkg.other", "pkg.sub.sibling"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"pkg.other", "pkg.sub.mod"}
