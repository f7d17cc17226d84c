"""errors.py: the user-error hierarchy and user_error_message (one line for expected failures, None for bugs)."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
from safetensors import SafetensorError

from vit_lens_clip import errors
from vit_lens_clip.errors import (
    BadInputError,
    CorruptFileError,
    OutputFolderError,
    RunFolderMismatchError,
    UserInputError,
    user_error_message,
)


@pytest.mark.parametrize("cls, also", [(BadInputError, ValueError), (RunFolderMismatchError, ValueError),
                                       (CorruptFileError, ValueError), (OutputFolderError, OSError)])
def test_every_user_error_is_a_user_input_error_and_its_builtin_kind(cls, also):
    err = cls("x")
    assert isinstance(err, UserInputError) and isinstance(err, also)  # `except ValueError` callers still catch it


@pytest.mark.parametrize("exc", [BadInputError("bad  index\n 7"), ValueError("bad\tvalue"),
                                 FileNotFoundError("gone"), PermissionError("no"), IsADirectoryError("dir")])
def test_expected_failures_are_one_line(exc):
    message = user_error_message(exc)
    assert message is not None and "\n" not in message and "\t" not in message and "  " not in message
    assert message == " ".join(str(exc).split())


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("k"), TypeError("t"), AssertionError(),
                                 ZeroDivisionError(), OSError("disk")])
def test_bugs_get_no_message(exc):
    assert user_error_message(exc) is None


def test_an_os_error_with_a_file_name_says_which_file():
    exc = FileNotFoundError(2, "No such file or directory", "/data/images")
    assert user_error_message(exc) == "No such file or directory: /data/images"


def test_an_error_without_text_is_named_by_its_type():
    assert user_error_message(BadInputError()) == "BadInputError"


def test_a_refused_pickle_gets_the_advice_not_torchs_text_anywhere_in_the_chain():
    try:
        try:
            raise pickle.UnpicklingError("Weights only load failed ... set weights_only=False ...")
        except pickle.UnpicklingError as inner:
            raise RuntimeError("loading the checkpoint failed") from inner
    except RuntimeError as outer:
        message = user_error_message(outer)  # a RuntimeError alone would be a bug; its cause decides
    assert message is not None and "weights_only=True" in message and ".safetensors" in message
    assert "weights_only=False" not in message
    assert user_error_message(ValueError("torch.load weights_only complained")) == message


def test_an_unreadable_safetensors_file_in_the_context_is_reported():
    try:
        try:
            raise SafetensorError("Error while deserializing header:\n HeaderTooLarge")
        except SafetensorError:
            raise RuntimeError("wrapping")  # noqa: B904 (the implicit context is what is tested)
    except RuntimeError as outer:
        message = user_error_message(outer)
    assert message == "not a readable safetensors file: Error while deserializing header: HeaderTooLarge"


def test_a_cycle_in_the_exception_chain_terminates():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert user_error_message(a) is None


def test_the_module_imports_nothing_heavy():
    """The CLI reports user errors before any model code loads: the module's own imports are light."""
    tree = ast.parse(Path(errors.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "difflib", "pickle", "safetensors", "typing"}, imported
