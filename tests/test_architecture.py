"""The package's structure, checked from its own source: no import cycle (lazy imports
inside functions count) and no module importing another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fewshot"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` for every import of a fewshot module in ``path``,
    wherever it stands (top level or inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "fewshot"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fewshot":
                continue
            names = [a.name for a in node.names]
            # `from . import x` imports the submodule x when there is one.
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            found += [(s, [], node.lineno) for s in subs]
            if len(subs) < len(names):
                found.append((target, [n for n in names if f"{target}.{n}" not in known], node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _, _ in imports(name, path, known):
            # Importing a.b.c runs a/__init__ and a/b/__init__ first.
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in known and prefix != name and not name.startswith(prefix + "."):
                    edges[name].add(prefix)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_fewshot_modules():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_modules_private_names():
    mods = modules()
    known = set(mods)
    offences = []
    for name, path in mods.items():
        for target, names, line in imports(name, path, known):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != name:
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {', '.join(private)} from {target}")
    assert offences == []


def test_no_dynamic_imports_in_the_package():
    """Registration is explicit: nothing imports by a computed name."""
    offences = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in ("__import__", "import_module"):
                    offences.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert offences == []


#: The layers of the README's architecture section, bottom first: a module may import
#: from its own layer and the layers below, never from one above.
LAYERS = [
    ("fewshot.errors", "fewshot.io", "fewshot.params", "fewshot.metrics", "fewshot.config", "fewshot.devices"),
    ("fewshot.data", "fewshot.rl", "fewshot.images"),
    ("fewshot.models",),
    ("fewshot.methods",),
    ("fewshot.store",),
    ("fewshot.evaluate",),
    ("fewshot.runs",),
    ("fewshot.train", "fewshot.distributed", "fewshot.memory", "fewshot.calibration"),
    ("fewshot.learner", "fewshot.export", "fewshot.select", "fewshot.report", "fewshot.plots", "fewshot.tune",
     "fewshot.advise", "fewshot.demo"),
    ("fewshot.cli", "fewshot.__main__"),
]


def layer_of(module: str) -> int | None:
    matches = [(len(prefix), i) for i, names in enumerate(LAYERS) for prefix in names
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_layers():
    edges = graph()
    unplaced = sorted(m for m in edges if m != "fewshot" and layer_of(m) is None)
    assert unplaced == [], "add these modules to LAYERS (and to the README's architecture section)"
    upward = sorted(f"{a} imports {b}" for a, targets in edges.items() if a != "fewshot"  # the package's face
                    for b in targets if b != "fewshot" and layer_of(b) > layer_of(a))
    assert upward == []


def test_a_run_folders_file_names_are_spelt_only_in_the_run_module():
    """One object owns a run folder (fewshot.runs.folder.Run): no other module names its
    state file, in code, comments or docstrings; they ask the Run."""
    owner = PACKAGE / "runs" / "folder.py"
    assert "state.json" in owner.read_text()
    offences = sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                      if p != owner and "state.json" in p.read_text())
    assert offences == []
