"""Every import points down (issue 14): each folder of the data flow is a layer, and a module
may import only from its own layer or from layers below it, at module level or inside a function.

The layers, bottom to top, are the ones ARCHITECTURE.md lists. A new top-level module or
folder must be given a layer here, so that its place in the flow is a decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aqrecipe"

#: Bottom to top. Modules in one entry form one layer and may import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("aqrecipe", "errors", "_testhooks", "optional", "_packer"),
    ("formats",),
    ("models",),
    ("quant", "codecs"),  # aqrecipe.quant.codecs: the public face of quant.codecs
    ("recipe",),
    ("plan",),
    ("calibration",),
    ("imatrix",),
    ("importance",),
    ("planner", "smoothquant"),
    ("output",),
    ("evaluate",),
    ("apply",),
    ("cli",),
)
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path) -> set[str]:
    """Every aqrecipe module ``path`` imports, wherever the import statement stands.

    ``from aqrecipe.x import y`` depends on the submodule ``aqrecipe.x.y`` when there is one,
    else on ``aqrecipe.x`` itself (its ``__init__`` defines ``y``).
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "aqrecipe" and not target.startswith("aqrecipe."):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_module(sub) else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("aqrecipe"))
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "aqrecipe"


def modules() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_folder_and_root_module_has_a_layer() -> None:
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.is_file() and p.suffix in (".py", ".pyi")) or (p.is_dir() and (p / "__init__.py").exists())}
    tops.discard("__init__")
    assert sorted(tops - set(LEVEL)) == [], "give each new module or folder a layer in LAYERS"


def test_imports_point_down() -> None:
    upward = []
    for module, targets in modules().items():
        here = LEVEL[layer_of(module)]
        for target in sorted(targets):
            if LEVEL[layer_of(target)] > here:
                upward.append(f"{module} -> {target}")
    assert upward == [], "imports that climb a layer:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules() -> None:
    graph = {m: {t for t in ts if t != m} for m, ts in modules().items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_layer_map_names_each_folder_once() -> None:
    names = [n for layer in LAYERS for n in layer]
    assert len(names) == len(set(names))
