"""Old import paths of moved modules keep working, with a DeprecationWarning.

``vit_lens_clip.spurious`` now lives at ``vit_lens_clip.methods.spurious`` (and likewise every entry of ``MOVED``,
with all their submodules). Importing an old name returns *the same module object* as the new name, so classes,
functions and monkeypatching are shared: there is never a second copy of a module. No file stays at the old path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {  # the first matching entry wins: specific names before their packages
    "vit_lens_clip.spatial.geometry": "vit_lens_clip.datasets.geometry",
    "vit_lens_clip.cli": "vit_lens_clip.app.cli",
    "vit_lens_clip.report": "vit_lens_clip.app.report",
    "vit_lens_clip.bench": "vit_lens_clip.app.bench",
    "vit_lens_clip.textspan": "vit_lens_clip.methods.textspan",
    "vit_lens_clip.spatial": "vit_lens_clip.methods.spatial",
    "vit_lens_clip.ablation": "vit_lens_clip.methods.ablation",
    "vit_lens_clip.spurious": "vit_lens_clip.methods.spurious",
    "vit_lens_clip.retrieval": "vit_lens_clip.methods.retrieval",
    "vit_lens_clip.zeroshot": "vit_lens_clip.methods.zeroshot",
}


def new_name(old: str) -> str | None:
    """The current name of module ``old`` if it (or a package above it) moved, else None."""
    for before, after in MOVED.items():
        if old == before or old.startswith(before + "."):
            return after + old[len(before):]
    return None


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module name to the already-importable module at its new name."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib's signature
        target_name = new_name(fullname)
        if target_name is None or importlib.util.find_spec(target_name) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:  # noqa: ANN001
        target_name = new_name(spec.name)
        warnings.warn(
            f"{spec.name} moved to {target_name}; import it from there (the old path will be removed)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(target_name)

    def exec_module(self, module: ModuleType) -> None:
        """The module was executed under its new name already."""

    def get_code(self, fullname: str):  # noqa: ANN201 - lets `python -m <old name>` run the moved module
        target_name = new_name(fullname)
        spec = importlib.util.find_spec(target_name)
        return spec.loader.get_code(target_name)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent), so old names never load a second copy."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())


def moved_attributes(module: str, moved: dict[str, str]):
    """A module ``__getattr__`` for names that moved out of ``module``: ``moved`` maps each name to its new module.

    The name is looked up there on use (an upward import at load time would make a circle), with a
    DeprecationWarning; any other missing name raises AttributeError as usual.
    """

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} moved to {moved[name]}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__
