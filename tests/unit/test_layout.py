"""The test tree mirrors the package: every module under vit_lens_clip/ is imported by a unit test file in the
folder of its area (tests/unit/<area>/, or tests/unit/ for top-level modules), so a newcomer finds its tests by
module, and `pytest tests/unit` (the fast loop) exercises every module."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE, UNIT = ROOT / "vit_lens_clip", ROOT / "tests" / "unit"


def _imported_modules(path: Path) -> set[str]:
    """Dotted names a test file imports: ``import a.b``, ``from a.b import c`` (a.b and a.b.c)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _modules() -> list[tuple[str, Path]]:
    """(dotted module name, its area folder under tests/unit) for every module of the package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name == "__init__.py":
            continue
        dotted = ".".join(("vit_lens_clip", *relative.with_suffix("").parts))
        out.append((dotted, UNIT.joinpath(*relative.parent.parts)))
    return out


def test_every_module_has_a_unit_test_in_its_area():
    uncovered = []
    for dotted, area in _modules():
        files = sorted(area.rglob("test_*.py")) if area != UNIT else sorted(UNIT.glob("test_*.py"))
        if not any(dotted in _imported_modules(f) for f in files):
            uncovered.append(f"{dotted} (expected in {area.relative_to(ROOT)}/)")
    assert not uncovered, "modules no unit test of their area imports:\n" + "\n".join(uncovered)


def test_test_files_mirror_package_folders():
    """Every folder of tests/unit names a package folder, so the mirror cannot drift."""
    for folder in sorted(p for p in UNIT.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        assert (PACKAGE / folder.relative_to(UNIT)).is_dir(), f"{folder} mirrors no package folder"
