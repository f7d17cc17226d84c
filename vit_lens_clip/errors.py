"""User-error exceptions: the failures the CLI reports as one line on stderr with exit status 2.

Anything else that escapes a command is a bug and prints a traceback. This module imports nothing heavy
(no torch), so the CLI can use it before any model code is loaded.
"""

from __future__ import annotations

import difflib
import pickle
from typing import Iterable

from safetensors import SafetensorError


class UserInputError(Exception):
    """Base class of every expected, user-caused failure (bad path, bad file, bad option, unsupported model)."""


class BadInputError(UserInputError, ValueError):
    """An argument or option value that cannot be used (out-of-range index, empty list, wrong dtype)."""


class UnknownHookError(UserInputError, KeyError):
    """A hook name the model does not have; the message names the closest real ones. A ``KeyError``, as the
    bare lookup that it replaces was."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown_hook(name: str, known: "Iterable[str]") -> UnknownHookError:
    """``UnknownHookError`` for ``name``, with a "did you mean" from the model's hook names (difflib)."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "; list them with model.hook_dict"
    return UnknownHookError(f"no hook named {name!r} in this model{hint}")


class RunFolderMismatchError(UserInputError, ValueError):
    """A run folder holds the results or checkpoint of a run on other inputs or settings."""


class CorruptFileError(UserInputError, ValueError):
    """A file on disk is truncated, fails its recorded checksum, or holds non-finite weights."""


class OutputFolderError(UserInputError, OSError):
    """An output folder cannot be used: it is a file, read-only, or holds files of another run."""


class UnsupportedTowerError(UserInputError, ValueError):
    """The vision tower is not a ViT that HookedViT can represent exactly."""


class UnknownModelError(UserInputError, ValueError):
    """A model name or pretrained tag that its library does not know; the message suggests the nearest ones."""


class NoTextTowerError(UserInputError):
    """A text-based tool was asked of an image-only model (a timm ViT)."""


class WeightsUnavailableError(RuntimeError, UserInputError):
    """Pretrained weights could not be fetched (usually: offline); the message says how to load locally."""


_PICKLE_ADVICE = ("refused to load a checkpoint that holds pickled objects other than tensors "
                  "(read with torch.load(weights_only=True) for safety); convert it to .safetensors")


def user_error_message(exc: BaseException) -> str | None:
    """One line describing an expected failure, or None for a bug (which deserves a traceback).

    Expected: ``UserInputError`` and the errors the package raises for bad input (ValueError, missing or
    unwritable paths), a refused pickle (torch's advice to set ``weights_only=False`` is never repeated) and
    unreadable safetensors files.
    """
    chain, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
            return _PICKLE_ADVICE
    for e in chain:
        if isinstance(e, SafetensorError):
            return f"not a readable safetensors file: {_one_line(e)}"
    if isinstance(exc, (UserInputError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                        PermissionError, FileExistsError)):
        return _one_line(exc)
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return text or type(exc).__name__
