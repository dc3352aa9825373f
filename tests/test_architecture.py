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


#: The one sanctioned door for code fewshot was not written with: the registry's loader of
#: the installed ``fewshot.plugins`` entry points (importlib.metadata, nothing else).
PLUGIN_LOADER = "fewshot.registry"


def dynamic_imports(source: str) -> list[int]:
    """Lines of ``source`` that import by a computed name or reach importlib: calls of
    ``__import__`` / ``import_module``, any mention of them or of ``importlib.util``,
    and any import of ``importlib`` (or of a module from it)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "importlib" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "importlib":
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr in ("import_module", "__import__", "util") and (
                node.attr != "util" or getattr(node.value, "id", "") == "importlib"):
            lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id in ("__import__", "import_module"):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_no_dynamic_imports_in_the_package_but_the_plugin_loader():
    """Registration is explicit: nothing imports by a computed name, except the registry
    loading the installed plug-ins' entry points."""
    offences = [f"{path.relative_to(PACKAGE.parent)}:{line}" for name, path in modules().items()
                if name != PLUGIN_LOADER for line in dynamic_imports(path.read_text())]
    assert offences == []
    # The loader itself reaches importlib only through importlib.metadata's entry points.
    loader = ast.parse(modules()[PLUGIN_LOADER].read_text())
    froms = [(n.module, [a.name for a in n.names]) for n in ast.walk(loader)
             if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("importlib")]
    assert froms == [("importlib.metadata", ["entry_points"])]
    assert not any(isinstance(n, ast.Import) and any(a.name.startswith("importlib") for a in n.names)
                   for n in ast.walk(loader))


def test_the_dynamic_import_finder_finds_each_form():
    for source in ("import importlib", "import importlib.util", "from importlib import import_module",
                   "from importlib.metadata import entry_points", "x = __import__('os')",
                   "m = importlib.import_module(name)", "spec = importlib.util.find_spec(n)", "f = import_module"):
        assert dynamic_imports(source) == [1], source
    assert dynamic_imports("import os\nfrom . import data\nx = obj.util") == []


#: The layers of the README's architecture section, bottom first: a module may import
#: from its own layer and the layers below, never from one above.
LAYERS = [
    ("fewshot.errors", "fewshot.io", "fewshot.params", "fewshot.registry", "fewshot.metrics", "fewshot.config",
     "fewshot.devices", "fewshot.taskkind", "fewshot.runtime", "fewshot.progress", "fewshot.budget"),
    ("fewshot.data", "fewshot.rl", "fewshot.images"),
    ("fewshot.models", "fewshot.features"),
    ("fewshot.methods", "fewshot.heads"),
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


#: The task kinds' names (:mod:`fewshot.taskkind`): code reads the kind, never compares its name.
KIND_NAMES = {"classification", "regression", "reinforcement"}
#: Comparisons with those words that are not about task kinds, and why.
NOT_KINDS = {
    "fewshot/select/metalearner.py": "objective 'regression' (against 'ranking') is the meta-learner's own objective",
}


def kind_literal_comparisons(source: str) -> list[int]:
    """Lines comparing (``==``, ``!=``, ``in``, ``not in``) something with a task kind's name:
    the name itself, or a tuple, list, set or dict literal holding it."""
    def names_a_kind(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in KIND_NAMES
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_a_kind(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return any(k is not None and names_a_kind(k) for k in node.keys)
        return False

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                                                 for op in node.ops):
            if any(names_a_kind(n) for n in [node.left, *node.comparators]):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Dict) and names_a_kind(node.func.value):
            lines.append(node.lineno)  # {"regression": ...}.get(task, ...): a branch spelt as a table
    return sorted(lines)


def test_no_branching_on_task_kind_names_outside_the_task_kind_module():
    """Generic code reads the task kind (its metric, direction, device rule ...); only
    :mod:`fewshot.taskkind` spells the kinds' names in comparisons. Declarations (a
    method's ``tasks = ("classification", "regression")``, a sampler's ``kind = ...``)
    are not comparisons and stay."""
    offences = []
    for name, path in modules().items():
        relative = str(path.relative_to(PACKAGE.parent))
        if name == "fewshot.taskkind" or relative in NOT_KINDS:
            continue
        offences += [f"{relative}:{line}" for line in kind_literal_comparisons(path.read_text())]
    assert offences == []


def test_the_kind_rule_sees_comparisons_and_not_declarations():
    assert kind_literal_comparisons('if task == "regression":\n    pass') == [1]
    assert kind_literal_comparisons('x = kind != "reinforcement"') == [1]
    assert kind_literal_comparisons('ok = task in ("classification", "regression")') == [1]
    assert kind_literal_comparisons('m = {"regression": "mse"}.get(task, "accuracy")') == [1]
    assert kind_literal_comparisons('tasks = ("classification", "regression")\nkind = "reinforcement"') == []
    assert kind_literal_comparisons('ok = task in TASKS') == []


def test_a_run_folders_file_names_are_spelt_only_in_the_run_module():
    """One object owns a run folder (fewshot.runs.folder.Run): no other module names its
    state file, in code, comments or docstrings; they ask the Run."""
    owner = PACKAGE / "runs" / "folder.py"
    assert "state.json" in owner.read_text()
    offences = sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                      if p != owner and "state.json" in p.read_text())
    assert offences == []


#: The most lines a module of the package may hold (the project's standard; a longer one is split by concept).
MAX_MODULE_LINES = 500


def test_no_module_of_the_package_is_over_500_lines():
    sizes = {str(path.relative_to(PACKAGE.parent)): len(path.read_text().splitlines()) for path in modules().values()}
    assert sizes, "no module found: PACKAGE points at the wrong folder"
    offences = sorted(f"{name}: {n} lines" for name, n in sizes.items() if n > MAX_MODULE_LINES)
    assert offences == [], f"split these modules by concept (at most {MAX_MODULE_LINES} lines each): {offences}"
