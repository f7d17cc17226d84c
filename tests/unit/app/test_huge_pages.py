"""app/huge_pages.py: THP_MEM_ALLOC_ENABLE is left as the user set it (unset: off, the default the huge-pages A/B
chose), and torch_setting() reports what torch got, not the variable. Torch is loaded in this process, so the decision is
tested with torch removed from sys.modules for the call (monkeypatch restores it); nothing restarts torch."""

from __future__ import annotations

import os
import sys

import pytest

from vit_lens_clip.app import huge_pages
from vit_lens_clip.app.huge_pages import UNSET, VARIABLE, record_for_torch, torch_setting


@pytest.fixture
def fresh(monkeypatch):
    """A clean record and environment; the real ones come back after the test."""
    monkeypatch.setattr(huge_pages, "_recorded", [])
    monkeypatch.delenv(VARIABLE, raising=False)
    return monkeypatch


def test_before_any_command_nothing_is_known(fresh):
    assert torch_setting() == "unknown: not started from the command line"


def test_before_torch_an_unset_variable_stays_unset_and_is_recorded(fresh):
    fresh.delitem(sys.modules, "torch")
    record_for_torch()
    assert VARIABLE not in os.environ
    assert torch_setting() == UNSET


def test_the_users_own_value_is_kept_and_recorded(fresh):
    fresh.delitem(sys.modules, "torch")
    fresh.setenv(VARIABLE, "0")
    record_for_torch()
    assert os.environ[VARIABLE] == "0"
    assert torch_setting() == "0"


@pytest.mark.parametrize("user_value", [None, "1"])
def test_after_torch_started_nothing_is_set_and_the_outcome_is_unknown(fresh, user_value):
    assert "torch" in sys.modules
    if user_value is not None:
        fresh.setenv(VARIABLE, user_value)
    record_for_torch()
    assert os.environ.get(VARIABLE) == user_value  # too late to matter: left alone
    assert torch_setting() == f"unknown: torch started before the command line ({VARIABLE}={user_value})"


def test_only_the_latest_call_counts(fresh):
    torch = sys.modules["torch"]
    fresh.delitem(sys.modules, "torch")
    record_for_torch()
    assert torch_setting() == UNSET
    sys.modules["torch"] = torch  # now it has started (never import it again: it cannot start twice)
    record_for_torch()
    assert torch_setting().startswith("unknown: torch started before the command line")
    assert len(huge_pages._recorded) == 1
