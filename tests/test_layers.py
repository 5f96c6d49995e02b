"""The architecture's dependency direction, checked on the source (docs/ARCHITECTURE.md, "Layers").

    entry points (extract, bench, prepare, train, export, generate, model/__main__, zoomfeat/__init__)
      -> cli (the entry points' shared plumbing)
        -> features / mil / training / generation
          -> model, slide, encoders, bags
            -> runtime

A module may import modules of its own component (``zoomfeat.model.unet`` from
``zoomfeat.model.zoomldm``) and of lower layers, never of a higher layer nor of a sibling
component of the same layer (the model knows nothing of slides; MIL reads bags only). Every
import counts, function-level and ``if TYPE_CHECKING:`` ones included (a lazy or type-only import
is still a dependency). There must be no import cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "zoomfeat"

#: component -> layer (higher imports lower). Top-level modules are their own component.
LAYERS = {
    "runtime": 0,
    "model": 1,
    "slide": 1,
    "encoders": 1,
    "bags": 1,
    "tilestore": 1,  # the tile store (docs/tile-store.md): extraction writes it, training reads it
    "data": 1,
    "features": 2,
    "mil": 2,
    "training": 2,
    "generation": 2,
    "interop": 2,
    "tasks": 2,
    "cli": 3,
    "extract": 4,
    "bench": 4,
    "prepare": 4,
    "train": 4,
    "export": 4,
    "generate": 4,
    "heatmap": 4,
    "options": 4,  # renders docs/options.md from every entry point's config dataclass
    "__init__": 4,
    "model.__main__": 4,
    "tasks.__main__": 4,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _component(module: str) -> str:
    parts = module.split(".")[1:]  # drop "zoomfeat"
    if not parts:
        return "__init__"
    if len(parts) == 2 and parts[1] == "__main__":  # a package's entry point (model/, tasks/)
        return ".".join(parts)
    return parts[0]


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The zoomfeat modules ``module`` imports (resolving ``from pkg import submodule``)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("zoomfeat"):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.startswith("zoomfeat"):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return {m for m in found if m in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(p, m, known) for m, p in mods.items()}


def test_every_component_has_a_layer(graph):
    unknown = sorted({_component(m) for m in graph} - set(LAYERS))
    assert not unknown, f"components without a layer in tests/test_layers.py: {unknown}"


def test_no_upward_or_sideways_imports(graph):
    bad = []
    for mod, deps in graph.items():
        c = _component(mod)
        for dep in deps:
            d = _component(dep)
            if d == c or c == f"{d}.__main__":
                continue
            if LAYERS[d] >= LAYERS[c]:
                bad.append(f"{mod} (layer {LAYERS[c]}) imports {dep} (layer {LAYERS[d]})")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_no_import_cycles(graph):
    # Tarjan's strongly connected components; any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_planted_violation(tmp_path):
    """The checker itself: a lower-layer module importing an entry point is found."""
    mod = tmp_path / "zoomfeat" / "slide"
    mod.mkdir(parents=True)
    (mod / "x.py").write_text("def f():\n    from zoomfeat.extract import main\n")
    deps = _imports(mod / "x.py", "zoomfeat.slide.x", {"zoomfeat.slide.x", "zoomfeat.extract"})
    assert deps == {"zoomfeat.extract"}
    assert LAYERS[_component("zoomfeat.extract")] > LAYERS[_component("zoomfeat.slide.x")]
