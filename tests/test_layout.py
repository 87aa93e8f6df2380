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
