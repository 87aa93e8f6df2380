"""The package layout's promises: programs are thin users that never import each other, splitting/
knows nothing of mondeq/, and every library file stays small enough to read as one idea."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = sorted((ROOT / "experiments").glob("*.py"))
MAX_LINES = 400


def _imported_modules(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from a.b import c`` gives ``a.b``; relative imports
    give their dotted name with the leading dots)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def _touches_sys_path(path: Path) -> bool:
    """Whether ``path`` reads or edits ``sys.path`` (``sys.path.insert``, ``from sys import path``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                and node.value.id == "sys"):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            return True
    return False


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_programs_never_import_another_program_nor_edit_sys_path(program: Path) -> None:
    siblings = {p.stem for p in PROGRAMS} - {program.stem}
    imported = {name.lstrip(".").split(".")[0] for name in _imported_modules(program)}
    assert not imported & siblings, f"{program.name} imports the program(s) {sorted(imported & siblings)}"
    assert "experiments" not in imported, f"{program.name} imports from experiments/"
    assert not _touches_sys_path(program), f"{program.name} touches sys.path"


def test_splitting_never_imports_mondeq() -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in _imported_modules(path)
                                                      if n.split(".")[0] == "mondeq")
                 for path in sorted((ROOT / "splitting").rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def test_every_library_file_is_at_most_400_lines() -> None:
    long = {str(path.relative_to(ROOT)): n
            for folder in ("mondeq", "splitting") for path in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them along concepts): {long}"


FAMILIES = ("MonotoneLinear", "MonotoneConv", "MonotoneMultiTier", "ConvOperator", "MultiTierOperator")


def test_no_code_outside_operators_asks_which_operator_family_it_holds() -> None:
    """Structure is a method of the family (``block_structure()``), not an isinstance switch."""
    offenders = {}
    for path in sorted((ROOT / "mondeq").rglob("*.py")):
        if (ROOT / "mondeq" / "operators") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
                names = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", None)
                         for n in ast.walk(node.args[1])} if len(node.args) > 1 else set()
                if names & set(FAMILIES):
                    offenders.setdefault(str(path.relative_to(ROOT)), []).append(node.lineno)
    assert not offenders, f"isinstance on an operator family outside mondeq/operators/: {offenders}"


def _module_imports(path: Path, package: str, own: str) -> set[str]:
    """The mondeq modules ``path`` (in ``package``) imports, resolved to files' dotted names.

    What runs, and when: an import at module level also runs the ``__init__`` of every package
    above the imported module (``from ..models.readouts import x`` runs ``models/__init__``); an
    import inside a function runs at call time, when the packages are loaded, so it adds the
    module alone; imports under ``if TYPE_CHECKING:`` (types only) add nothing. The packages
    holding ``own`` (the importing module) are being loaded already and add nothing either."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    lazy = {id(n) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        before = set(found)
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{module}.{alias.name}"
                found.add(sub if _module_path(sub) else module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        if id(node) not in lazy:  # the packages above each module imported at import time
            for name in found - before:
                parts = name.split(".")
                found.update(p for k in range(2, len(parts))
                             if not (own + ".").startswith((p := ".".join(parts[:k])) + "."))
    return {name for name in found if name.split(".")[0] == "mondeq" and _module_path(name) and name != own}


def _module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def test_no_import_cycle_in_mondeq() -> None:
    graph = {}
    for path in sorted((ROOT / "mondeq").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = name if rel.name == "__init__" else ".".join(rel.parts[:-1])
        graph[name] = _module_imports(path, package + ".x", name)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " → ".join(cycle))
