"""Shared fixtures: random-weight open_clip models with perturbed biases and LayerNorm parameters."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

import jaxtyping
import open_clip
import pytest
import torch

# Two threads, or one per worker under pytest-xdist (`-n 2` on two cores: the workers share the cores), and the
# same for the commands the tests start
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# Tests write only inside temporary folders: the text-embedding cache goes to one for the session, never to the
# user's home folder (whatever VIT_LENS_CLIP_CACHE the shell had), and the checkout must gain no files (checked at
# the end of the session, below).
_SESSION_CACHE = tempfile.mkdtemp(prefix="vit_lens_clip_test_cache_")
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
os.environ["VIT_LENS_CLIP_CACHE"] = _SESSION_CACHE
ROOT = Path(__file__).resolve().parents[1]
_IGNORED_LITTER = ("__pycache__", ".pytest_cache", ".ruff_cache", ".jupyter", ".ipynb_checkpoints")


def _untracked_files() -> set[str] | None:
    """Untracked, unignored files of the checkout (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    paths = {line[3:] for line in out.splitlines() if line.startswith("??")}
    return {p for p in paths if not any(part in _IGNORED_LITTER for part in Path(p).parts)}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_LITTER_KEY] = _untracked_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if the tests left files in the checkout (a test must write inside its tmp_path)."""
    before = session.config.stash.get(_LITTER_KEY, None)
    after = _untracked_files() if before is not None else None
    if before is None or after is None or os.environ.get("VIT_LENS_CLIP_ALLOW_LITTER"):
        return
    litter = sorted(after - before)
    if litter:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"FAILED: the tests left files in the checkout: {litter[:10]}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_LITTER_KEY = pytest.StashKey[set]()

# whether jaxtyping's pytest hook checks the package at run time (pyproject's addopts: --jaxtyping-packages=...)
TYPE_CHECKED = False


def pytest_configure(config: pytest.Config) -> None:
    global TYPE_CHECKED
    TYPE_CHECKED = bool(config.getoption("--jaxtyping-packages", default=None))


@contextlib.contextmanager
def type_checks_off() -> Iterator[None]:
    """Inside, the run-time checks are skipped as in a normal install: jaxtyping's documented switch
    ``jaxtyping.config.update("jaxtyping_disable", True)`` (the same as ``JAXTYPING_DISABLE=1``)."""
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


def assert_refused(call: Callable[[], object], message: str, error: type[Exception] = ValueError) -> None:
    """``call()`` is refused twice over: with the run-time checks on (the test run), jaxtyping/beartype reject the
    argument that breaks an annotation (``TypeCheckError``); with them off, as in a normal install, the package's
    own check raises ``error`` whose text is exactly ``message``, the one line the user sees."""
    if TYPE_CHECKED:
        with pytest.raises(jaxtyping.TypeCheckError):
            call()
    with type_checks_off(), pytest.raises(error) as caught:
        call()
    assert str(caught.value) == message


def perturb_(model: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Move every 1-D parameter (biases, LayerNorm γ/β, LayerScale, class token) away from its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@functools.lru_cache(maxsize=4)
def random_open_clip(name: str, seed: int = 0, **overrides):
    """An open_clip model with random weights, perturbed so that bias/LN mistakes show."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model(name, pretrained=None, **overrides)
    return perturb_(model.eval(), seed=seed)


def tiny_clip(seed: int = 0, **vision):
    """A tiny open_clip CLIP built from open_clip's own classes, with custom vision options."""
    torch.manual_seed(seed)
    vision_cfg = dict(image_size=32, patch_size=8, width=64, layers=3, head_width=16, mlp_ratio=4.0)
    vision_cfg.update(vision)
    text_cfg = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)
    quick_gelu = vision_cfg.pop("quick_gelu", False)
    model = open_clip.CLIP(embed_dim=48, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=quick_gelu)
    return perturb_(model.eval(), seed=seed)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|: the exactness measure used throughout the tests."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture
def images():
    def make(model_or_size, batch: int = 2, seed: int = 1):
        size = model_or_size if isinstance(model_or_size, tuple) else tuple(model_or_size.visual.image_size)
        return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))

    return make


def through_pooler(model, x: torch.Tensor, cache, delta: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Brute force for an attention-pooled tower: the folded change of the embedding when ``delta`` [B, T, d] is
    added to the pooler's input alone, with ln_k's per-token statistics, the pooler's pattern and the final
    LayerNorm's statistics (none for SigLIP) frozen at their clean values (``cache``), read at the pooler's
    attention output (its MLP is not on the direct path). Everything is linear once frozen, so ``delta`` may be
    scaled by ``scale`` (and the change back) to keep the difference of two forwards clear of cancellation."""
    tokens = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    if not model.attn_pool.include_prefix:
        tokens, delta = tokens[:, model.cfg.n_prefix:], delta[:, model.cfg.n_prefix:]
    mu, sigma = tokens.mean(-1, keepdim=True), cache["attn_pool.ln_k.hook_scale"]
    outs = []
    for add in (torch.zeros_like(delta), delta * scale):
        hooks = [("attn_pool.ln_k.hook_normalized", lambda t, hook, add=add: (tokens + add - mu) / sigma),
                 ("attn_pool.attn.hook_pattern", lambda t, hook: cache["attn_pool.attn.hook_pattern"]),
                 ("attn_pool.hook_attn_out", lambda t, hook: outs.append(t[:, 0]))]
        with torch.no_grad():
            model.run_with_hooks(x, fwd_hooks=hooks)
    change = (outs[1] - outs[0]) / scale
    if model.ln_final is not None:
        pooled = cache["hook_pooled"]
        sigma_f = ((pooled - pooled.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + model.ln_final.eps).sqrt()
        change = model.ln_final.w * change / sigma_f
    return change @ model.W_proj
