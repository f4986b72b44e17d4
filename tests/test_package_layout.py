"""The house rules of the package layout: no import cycles, and tools reach model families only through the
registry (`mobilevit.auto`), never by a family's module or class name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mobilevit
from mobilevit import auto

PACKAGE_DIR = Path(mobilevit.__file__).resolve().parent
# The tools on top of the registry (tests/test_package_layout.py checks they name no family).
TOOLS = ["pipelines", "predict", "export", "benchmark", "benchmark_train", "benchmark_command", "hub", "conversion", "training.job", "training.demo",
         "training.cli"] + [f"export.{p.stem}" for p in sorted((PACKAGE_DIR / "export").glob("*.py")) if p.stem != "__init__"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every package module `name` imports, at any depth of its code (function-level imports included: a
    cycle hidden in a function is still a cycle in the design)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg's __init__
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_walker_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "mobilevit.auto" in graph["mobilevit.pipelines"]
    assert "mobilevit.models.mobilevit.fast_mobilevit" in graph["mobilevit.models.mobilevit.modeling_mobilevit"]
    assert "mobilevit.fast_inference" in graph["mobilevit.models.mobilevit.fast_mobilevit"]
    assert "mobilevit.auto" in graph["mobilevit.predict"]  # imported inside a function there
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(cycle) for cycle in found)


@pytest.mark.parametrize("tool", TOOLS)
def test_tools_reach_families_only_through_the_registry(tool):
    graph = import_graph()
    name = f"mobilevit.{tool}"
    family_modules = sorted(m for m in graph[name] if m.startswith("mobilevit.models"))
    assert not family_modules, f"{name} imports {family_modules}; ask mobilevit.auto instead"
    source = package_modules()[name].read_text(encoding="utf-8")
    class_names = {cls.__name__ for family in auto.FAMILIES.values() for cls in
                   (family.config_class, family.pretrained_class, *family.model_classes.values())}
    named = sorted(cls for cls in class_names if cls in source)
    assert not named, f"{name} names the family classes {named}; ask mobilevit.auto instead"


def test_every_family_is_complete():
    for model_type, family in auto.FAMILIES.items():
        assert family.config_class.model_type == model_type
        assert set(family.tasks) == {"image-classification", "semantic-segmentation", "image-feature-extraction",
                                     "object-detection"}
        assert family.backbone_class is not None and issubclass(family.backbone_class, family.pretrained_class)
        for task, cls in family.model_classes.items():
            assert issubclass(cls, family.pretrained_class) and family.task_of_class(cls) == task
        assert family.variants and all(family.canonical_variant(v) == v for v in family.variants)
        assert family.converter is not None and family.converter.rename_table.rules
        assert family.citation.startswith("@") and family.description
