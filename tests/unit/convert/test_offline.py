"""convert/offline.py: the environment decides offline before any probe; the offline mode is switched for the call."""

import socket

import pytest
from huggingface_hub import constants as hub_constants

from vit_lens_clip.convert import offline


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_environment_says_offline_without_a_probe(monkeypatch, var, value):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(var, value)

    def no_network(*a, **k):
        raise AssertionError("probed the network although the environment says offline")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert offline.hub_offline()


def test_unreachable_host_is_offline_and_the_probe_is_bounded(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid.example:8443/x")
    assert offline.hub_host() == "hub.invalid.example"
    calls = []

    def refuse(address, timeout=None):
        calls.append(address)
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    offline._hub_unreachable.cache_clear()
    try:
        assert offline.hub_offline() and offline.hub_offline()
    finally:
        offline._hub_unreachable.cache_clear()
    assert calls == [("hub.invalid.example", 443)]  # one probe, its answer kept for the process


def test_default_host_and_offline_mode_restores(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert offline.hub_host() == "huggingface.co"
    before = hub_constants.HF_HUB_OFFLINE
    with offline.hub_offline_mode():
        assert hub_constants.HF_HUB_OFFLINE is True
    assert hub_constants.HF_HUB_OFFLINE == before
    with pytest.raises(RuntimeError), offline.hub_offline_mode():
        raise RuntimeError
    assert hub_constants.HF_HUB_OFFLINE == before
