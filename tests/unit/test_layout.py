"""The test tree mirrors the package: every module under vit_lens_clip/ is imported by a unit test file in the
mirror of its folder or of an enclosing area (vit_lens_clip/app/benchmarks/timing.py: tests/unit/app/benchmarks/ or
tests/unit/app/; top-level modules: tests/unit/), so a newcomer finds its tests by module, and `pytest tests/unit`
(the fast loop) exercises every module."""

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


def _candidate_files(area: Path) -> list[Path]:
    """Test files in the module's mirror folder (and below it), and in each enclosing area below tests/unit."""
    if area == UNIT:
        return sorted(UNIT.glob("test_*.py"))
    files, folder = sorted(area.rglob("test_*.py")), area
    while folder.parent != UNIT:
        folder = folder.parent
        files += sorted(folder.glob("test_*.py"))
    return files


def test_every_module_has_a_unit_test_in_its_area():
    uncovered = []
    for dotted, area in _modules():
        if not any(dotted in _imported_modules(f) for f in _candidate_files(area)):
            uncovered.append(f"{dotted} (expected in {area.relative_to(ROOT)}/)")
    assert not uncovered, "modules no unit test of their area imports:\n" + "\n".join(uncovered)


def test_test_files_mirror_package_folders():
    """Every folder of tests/unit names a package folder, so the mirror cannot drift."""
    for folder in sorted(p for p in UNIT.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        assert (PACKAGE / folder.relative_to(UNIT)).is_dir(), f"{folder} mirrors no package folder"
