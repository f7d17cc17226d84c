"""The package's imports point one way (docs/architecture.md), read from the source with ``ast``:

application (app/) → methods (methods/) → decomposition (decompose/) → model (model/, convert/, loading.py),
with datasets/, viz/ and embedded/ as leaves that import only each other and nothing above the model layer.
No circle among modules, and no import inside a function except the listed lazy and optional ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vit_lens_clip

PACKAGE = Path(vit_lens_clip.__file__).resolve().parent
CORE_RANK = {"model": 0, "convert": 0, "loading": 0, "decompose": 1, "distributed": 1.5, "methods": 2, "app": 3}
LEAVES = {"datasets", "viz", "embedded"}
# modules every layer may import: they import nothing of the package but each other
BASE = {"errors", "validation", "integrity", "options"}
# the package's own plumbing (public re-exports, ``python -m vit_lens_clip``)
ROOT = {"__init__", "__main__"}
# imports that may sit inside a function, each with its reason
LAZY_OK = {
    ("vit_lens_clip.app.cli", "*"): "the CLI loads a command's modules only when that command runs (fast --help)",
    ("vit_lens_clip.datasets.segmentation", "h5py"): "optional dependency (extra 'seg')",
    ("vit_lens_clip.convert.sources", "transformers"): "optional dependency (extra 'hf')",
    ("vit_lens_clip.methods.textspan.bench", "threadpoolctl"): "optional dependency of a benchmark script",
    ("vit_lens_clip.methods.textspan.gram_eigen", "scipy.linalg"): "0.4 s to import, needed only by TextSpan's "
                                                                   "one-thread CPU route (D >= 256)",
    ("vit_lens_clip.methods.textspan.make_pools", "wordfreq"): "needed only to regenerate the shipped pools",
    ("vit_lens_clip.methods.textspan.make_pools", "better_profanity"): "filters the pools when they are regenerated",
    ("vit_lens_clip.viz.html", "circuitsvis"): "optional: pages fall back to plotly without it",
    ("vit_lens_clip.methods.sae.formats", "sae_lens"): "optional dependency (extra 'sae')",
    ("vit_lens_clip.viz.attention", "circuitsvis.utils.convert_props"): "optional: as above",
    ("vit_lens_clip.app.collect", "resource"): "Unix only (the address-space limit of a memory check)",
    ("vit_lens_clip.app.benchmarks.huge_pages_ab", "*"): "the A/B driver only starts processes: each fresh child "
                                                          "imports torch under the setting it measures",

}
# runnable scripts inside methods/ (``python -m ...``), not library entry points
ARGPARSE_OK = {
    "vit_lens_clip.methods.textspan.bench": "benchmark script (python -m)",
    "vit_lens_clip.methods.textspan.make_pools": "regenerates the shipped pools (python -m)",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for every import statement; ``from X import y`` counts X.y when
    that is a module of the package, else X."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    found.append((full if full in MODULES else child.module, in_function))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue
            visit(child, inner)

    visit(tree, False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


FILES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
MODULES = set(FILES)
GRAPH = {name: _imports(ast.parse(path.read_text(encoding="utf-8"))) for name, path in FILES.items()}


def _area(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "vit_lens_clip" else None


def _own(module: str) -> str | None:
    """The package module an import names (a package's __init__ for a package)."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def test_no_import_points_up_a_layer():
    wrong = []
    for source, imports in GRAPH.items():
        src = _area(source)
        for target, _ in imports:
            if not target.startswith("vit_lens_clip.") or _own(target) is None:
                continue
            dst = _area(target)
            if src in LEAVES and dst in CORE_RANK and CORE_RANK[dst] > 0:
                wrong.append(f"{source} -> {target} (a leaf imports from above the model layer)")
            elif src in CORE_RANK and dst in CORE_RANK and CORE_RANK[dst] > CORE_RANK[src]:
                wrong.append(f"{source} -> {target} ({src} is below {dst})")
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_layer():
    """A new top-level area must be placed in the layering before the checks above can see it."""
    areas = {_area(m) for m in MODULES} - {None}
    unplaced = sorted(a for a in areas if a not in CORE_RANK and a not in LEAVES and a not in BASE and a not in ROOT)
    assert not unplaced, f"place these in CORE_RANK, LEAVES or BASE: {unplaced}"


def test_base_modules_import_only_each_other():
    wrong = [f"{source} -> {target}" for source, imports in GRAPH.items() if _area(source) in BASE
             for target, _ in imports if target.startswith("vit_lens_clip.") and _area(target) not in BASE]
    assert not wrong, "\n".join(wrong)


def test_methods_hold_no_command_line():
    wrong = [f"{source} imports argparse" for source, imports in GRAPH.items()
             if _area(source) == "methods" and source not in ARGPARSE_OK and any(t == "argparse" for t, _ in imports)]
    assert not wrong, "\n".join(wrong)


def test_methods_hold_no_synthetic_world():
    """The shapes world (datasets.shapes_world and its adapters) reaches a method only through its caller."""
    wrong = [f"{source} -> {target}" for source, imports in GRAPH.items() if _area(source) == "methods"
             for target, _ in imports if target.startswith("vit_lens_clip.datasets.shapes")]
    assert not wrong, "\n".join(wrong)


def test_no_import_inside_a_function_without_a_reason():
    wrong = []
    for source, imports in GRAPH.items():
        for target, inside in imports:
            if inside and (source, target) not in LAZY_OK and (source, "*") not in LAZY_OK:
                wrong.append(f"{source}: import {target} inside a function")
    assert not wrong, "\n".join(wrong)


def test_module_graph_has_no_circle():
    edges = {s: {_own(t) for t, _ in imports if t.startswith("vit_lens_clip.") and _own(t)} - {s}
             for s, imports in GRAPH.items()}
    # a module imports its parent packages implicitly; only the explicit edges make circles
    circles, state = [], {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt]
                circles.append(" -> ".join(cycle))
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            walk(node, [node])
    assert not circles, "\n".join(circles)


def test_the_checks_see_the_package():
    """Guards against a vacuous pass: the graph holds the known layers and their known downward edges."""
    assert {"vit_lens_clip.app.report", "vit_lens_clip.methods.spurious", "vit_lens_clip.decompose.parts"} <= MODULES
    assert any(t.startswith("vit_lens_clip.methods") for t, _ in GRAPH["vit_lens_clip.app.report"]) or any(
        t.startswith("vit_lens_clip.app.sections") for t, _ in GRAPH["vit_lens_clip.app.report"])
    assert ("vit_lens_clip.decompose.parts", False) in [(_own(t), i) for t, i in GRAPH["vit_lens_clip.methods.ablation"]]
