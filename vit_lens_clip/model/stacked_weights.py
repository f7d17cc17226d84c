"""TransformerLens' weight accessors for any model with ``blocks[l].attn`` / ``blocks[l].mlp`` (both towers).

As on ``HookedTransformer``: ``W_Q``, ``W_K``, ``W_V`` [n_layers, n_heads, d_model, d_head], ``W_O``
[n_layers, n_heads, d_head, d_model], their biases, ``W_in``/``W_out``/``b_in``/``b_out`` of the MLPs,
``QK`` = W_Q W_Kᵀ and ``OV`` = W_V W_O as ``transformer_lens.FactoredMatrix`` [n_layers, n_heads, d_model, d_model],
``accumulated_bias`` (Σ b_O, b_out before a layer) and ``run_with_cache`` returning an ``ActivationCache`` (what
the cache reads), and ``cfg.device`` kept equal to the parameters' device after ``.to()`` / ``.cuda()`` / ``.cpu()``.
"""

from __future__ import annotations

from typing import Any, Iterable, Union

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.FactoredMatrix import FactoredMatrix

from vit_lens_clip.errors import unknown_hook


class _HookLookup(dict):
    """The module table TransformerLens looks hook names up in; an unknown name raises ``UnknownHookError``."""

    def __init__(self, modules: dict, hooks: dict):
        super().__init__(modules)
        self.hooks = hooks

    def __missing__(self, name: str):
        raise unknown_hook(name, self.hooks)


class StackedWeights:
    """Mixin for a ``HookedRootModule`` with ``self.blocks``, ``self.cfg`` and ``self.W_pos``."""

    def _stack(self, path: str) -> Tensor:
        owner, name = path.split(".")
        return torch.stack([getattr(getattr(block, owner), name) for block in self.blocks])

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("attn.W_Q")

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("attn.W_K")

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return self._stack("attn.W_V")

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        return self._stack("attn.W_O")

    @property
    def b_Q(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        return self._stack("attn.b_Q")

    @property
    def b_K(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        return self._stack("attn.b_K")

    @property
    def b_V(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        return self._stack("attn.b_V")

    @property
    def b_O(self) -> Float[Tensor, "n_layers d_model"]:
        return self._stack("attn.b_O")

    @property
    def W_in(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        return self._stack("mlp.W_in")

    @property
    def W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        return self._stack("mlp.W_out")

    @property
    def b_in(self) -> Float[Tensor, "n_layers d_mlp"]:
        return self._stack("mlp.b_in")

    @property
    def b_out(self) -> Float[Tensor, "n_layers d_model"]:
        return self._stack("mlp.b_out")

    @property
    def QK(self) -> FactoredMatrix:
        """Bilinear attention-score form per head: score = x_q · (W_Q W_Kᵀ) · x_k (before 1/√d_head, biases)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """What each head writes per unit of attention: x_src · W_V W_O (before b_V, b_O)."""
        return FactoredMatrix(self.W_V, self.W_O)

    # ------------------------------------------ hook names: a misspelling names the closest real ones
    def setup(self) -> None:
        super().setup()
        self.mod_dict = _HookLookup(self.mod_dict, self.hook_dict)

    def check_hook_names(self, names: Union[str, Iterable[str]]) -> None:
        """Raise ``UnknownHookError`` (with a "did you mean") for any name that is not one of the model's hooks."""
        for name in [names] if isinstance(names, str) else names:
            if name not in self.hook_dict:
                raise unknown_hook(name, self.hook_dict)

    # ------------------------------------------ what ActivationCache reads
    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True, **kwargs: Any):
        """Run and cache activations; returns (embedding, ``transformer_lens.ActivationCache``). A list of names as
        ``names_filter`` must hold real hook names (a misspelled one would be silently left out of the cache)."""
        names_filter = kwargs.get("names_filter")
        if isinstance(names_filter, (str, list, tuple)):
            self.check_hook_names(names_filter)
        out, cache_dict = super().run_with_cache(*model_args, **kwargs)
        if return_cache_object:
            return out, ActivationCache(cache_dict, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache_dict

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """Σ b_O (and Σ b_out) of the blocks before ``layer``: the bias part of the residual stream."""
        bias = torch.zeros(self.cfg.d_model, device=self.W_pos.device, dtype=self.W_pos.dtype)
        for i in range(layer):
            bias = bias + self.blocks[i].attn.b_O
            if include_mlp_biases:
                bias = bias + self.blocks[i].mlp.b_out
        if mlp_input and layer < self.cfg.n_layers:
            bias = bias + self.blocks[layer].attn.b_O
        return bias

    # ----------------------------------------------------------- cfg.device
    def _sync_cfg_device(self) -> None:
        first = next(self.parameters(), None)
        self.cfg.device = first.device if first is not None else torch.device("cpu")

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._sync_cfg_device()
        return out
