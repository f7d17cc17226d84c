"""Splice SAEs into a HookedViT at any hook point, and take them out again.

``attach_sae(model, sae)`` makes the SAE a child module of the hook point ``H`` it reads (``H.sae``) and adds
a permanent TransformerLens hook there that replaces the activation by the SAE's output (``sae.py``). After
``model.setup()`` the SAE's own hook points are ordinary model hooks, ``H.sae.hook_sae_acts_post`` etc.:
cache them with ``run_with_cache``, ablate or steer features with ``run_with_hooks``. Hooks that the user
adds on ``H`` itself run after the splice and see its output. ``detach_sae`` removes the hook and the child
and restores the model's hook dictionary. Token positions outside the SAE's ``positions`` pass unchanged.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor

from vit_lens_clip.methods.sae.sae import SparseAutoencoder
from vit_lens_clip.model.hooked_vit import HookedViT

SAE_CHILD = "sae"
_HANDLE = "_vit_lens_sae_handles"


def sae_hook_name(sae_or_hook, point: str = "hook_sae_acts_post") -> str:
    """The model-level name of an SAE hook point once spliced, e.g. 'blocks.3.hook_resid_post.sae.hook_sae_acts_post'."""
    hook = sae_or_hook.cfg.hook_name if isinstance(sae_or_hook, SparseAutoencoder) else str(sae_or_hook)
    return f"{hook}.{SAE_CHILD}.{point}"


def activation_width(model: HookedViT, hook_name: str) -> int:
    """Last-dimension width of the activation at ``hook_name`` (one forward pass on a blank image)."""
    check_hook_exists(model, hook_name)
    seen: dict[str, int] = {}

    def record(t: Tensor, hook) -> None:
        seen["width"] = t.shape[-1]

    p = next(model.parameters())
    blank = torch.zeros(1, model.cfg.in_channels, *model.cfg.image_size, dtype=p.dtype, device=p.device)
    with torch.no_grad():
        model.run_with_hooks(blank, fwd_hooks=[(hook_name, record)])
    if "width" not in seen:
        raise ValueError(f"hook {hook_name!r} did not fire in a forward pass of this model")
    return seen["width"]


def check_hook_exists(model: HookedViT, hook_name: str) -> None:
    if hook_name not in model.hook_dict:
        close = difflib.get_close_matches(hook_name, list(model.hook_dict), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"the model has no hook {hook_name!r}{hint}")


def check_compatible(model: HookedViT, sae: SparseAutoencoder, hook_name: str | None = None) -> None:
    """Clear errors for an SAE that cannot read this model: unknown hook, width mismatch, read-only hook."""
    hook_name = hook_name or sae.cfg.hook_name
    check_hook_exists(model, hook_name)
    if hook_name == "hook_pooled" and model.attn_pool is None and not model.cfg.final_ln_after_pool:
        raise ValueError("hook_pooled is read-only for token pooling (the embedding is pooled from ln_final of "
                         "every token): splice at the last block's hook_resid_post instead")
    width = activation_width(model, hook_name)
    if width != sae.cfg.d_in:
        raise ValueError(f"the SAE reads width d_in={sae.cfg.d_in} but {hook_name!r} has width {width} in this model")


def _splice(sae: SparseAutoencoder):
    positions = sae.cfg.positions

    def hook(x: Tensor, hook) -> Tensor:
        if positions == "all":
            return sae(x)
        if x.ndim < 3:
            raise ValueError(f"an SAE trained on {positions!r} positions needs a [batch, pos, d] activation, "
                             f"got {tuple(x.shape)}")
        part = slice(0, 1) if positions == "cls" else slice(1, None)
        out = x.clone()
        out[:, part] = sae(x[:, part])
        return out

    return hook


def attach_sae(model: HookedViT, sae: SparseAutoencoder, use_error_term: bool = False,
               hook_name: str | None = None) -> SparseAutoencoder:
    """Splice ``sae`` at its hook (or ``hook_name``): the activation becomes x̂ (or x̂ + error, unchanged)."""
    hook_name = hook_name or sae.cfg.hook_name
    check_compatible(model, sae, hook_name)
    point = model.hook_dict[hook_name]
    if SAE_CHILD in point._modules:
        raise ValueError(f"an SAE is already attached at {hook_name!r}; detach_sae(model, {hook_name!r}) first")
    p = next(model.parameters())
    sae.to(p.device)
    sae.use_error_term = use_error_term
    point.add_module(SAE_CHILD, sae)
    before = list(point.fwd_hooks)
    point.add_hook(_splice(sae), dir="fwd", is_permanent=True)
    setattr(point, _HANDLE, [h for h in point.fwd_hooks if h not in before])
    model.setup()
    return sae


def detach_sae(model: HookedViT, hook_name: str) -> SparseAutoencoder:
    """Remove the SAE spliced at ``hook_name`` (its hook and its hook points); returns it."""
    point = model.mod_dict.get(hook_name)
    if point is None or SAE_CHILD not in point._modules:
        raise ValueError(f"no SAE is attached at {hook_name!r}; attached: {attached_saes(model) or 'none'}")
    for handle in getattr(point, _HANDLE, []):
        handle.hook.remove()
        if handle in point.fwd_hooks:
            point.fwd_hooks.remove(handle)
    delattr(point, _HANDLE)
    sae = point._modules.pop(SAE_CHILD)
    sae.use_error_term = False
    model.setup()
    return sae


def attached_saes(model: HookedViT) -> dict[str, SparseAutoencoder]:
    """Hook name → the SAE spliced there."""
    return {name: point._modules[SAE_CHILD] for name, point in model.hook_dict.items()
            if SAE_CHILD in point._modules and isinstance(point._modules[SAE_CHILD], SparseAutoencoder)}


@contextmanager
def saes_spliced(model: HookedViT, saes: Sequence[SparseAutoencoder] | SparseAutoencoder,
                 use_error_term: bool = False) -> Iterator[HookedViT]:
    """``with saes_spliced(model, sae): ...`` splices the SAEs for the block and always takes them out."""
    saes = [saes] if isinstance(saes, SparseAutoencoder) else list(saes)
    done: list[str] = []
    try:
        for sae in saes:
            attach_sae(model, sae, use_error_term)
            done.append(sae.cfg.hook_name)
        yield model
    finally:
        for name in reversed(done):
            detach_sae(model, name)
