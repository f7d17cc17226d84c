"""The image embedding's decomposition in one hooked forward pass: ``DecompositionCapture`` and ``decompose``.

The capture attaches hooks that keep only what the decomposition needs (pooled rows; per-(head, source) pieces
only for the chosen layers; text scores of those pieces through the pull-back, never [B, L, H, N, D]), asks the
readout's piece builder (``decompose.pieces``) for the raw pieces of the pooled vector, and folds them with the
one assembler (``decompose.assemble``). The math: pieces.py (what the pieces are), assemble.py (shares),
fold.py (the final LayerNorm).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.decompose.assemble import assemble
from vit_lens_clip.decompose.decomposition import Decomposition
from vit_lens_clip.decompose.fold import Convention
from vit_lens_clip.decompose.output_fold import output_fold
from vit_lens_clip.decompose.pieces import NormedMeanPieces, PoolerPieces, RowPieces, value_dots
from vit_lens_clip.model.hooked_text import HookedTextTransformer
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.model.pooling import compute_dtype
from vit_lens_clip.validation import check_embeddings, layer_indices

__all__ = ["Decomposition", "DecompositionCapture", "decompose"]

Hook = tuple[str, Callable]


Pieces = Union[RowPieces, PoolerPieces, NormedMeanPieces]


def pieces_for(model: HookedViT, layers: Sequence[int], per_source: bool, convention: Convention) -> Pieces:
    """The piece builder of the image tower's readout: its attentional pooler, the patch mean of per-token normed
    tokens (a final LayerNorm before the mean), or its pooled row."""
    if model.attn_pool is not None:
        return PoolerPieces(model, layers, per_source, convention)
    if model.norms_before_pooling:
        return NormedMeanPieces(model, layers, per_source, convention)
    return RowPieces(model, model.readout, layers, per_source)


class DecompositionCapture:
    """Hook functions that keep only what the decomposition needs, then assemble it.

    Use ``hooks()`` with ``model.run_with_hooks``, then ``finish()``; or ``from_cache(cache)``.
    ``pieces`` (default: from the image tower's readout) and ``embedding_hook`` let the text tower use it too.
    """

    def __init__(
        self,
        model: Union[HookedViT, HookedTextTransformer],
        layers: Optional[Sequence[int]] = None,
        per_source: bool = False,
        texts: Optional[Float[Tensor, "n_texts d_out"]] = None,
        convention: Convention = "equal_share",
        normalize: bool = False,
        reduce_values: bool = True,
        pieces: Optional[Pieces] = None,
        embedding_hook: str = "hook_image_embed",
    ):
        """``reduce_values``: contract the values with the texts' pull-back during the pass (keeps [B, H, N, K+1]
        per layer instead of the values [B, N, H, d_head]); pass False when ``texts`` is replaced before
        ``finish()``."""
        self.model = model
        self.layers = layer_indices(layers, model.cfg.n_layers)  # out-of-range indices raise, never wrap
        self.per_source, self.convention, self.normalize = per_source, convention, normalize
        self.pieces = pieces if pieces is not None else pieces_for(model, self.layers, per_source, convention)
        self.embedding_hook = embedding_hook
        if texts is not None:
            check_embeddings(texts, model.cfg.output_dim, "texts")
        self.dtype = compute_dtype(model.W_proj.dtype)
        self.texts = None if texts is None else texts.to(self.dtype)
        self.store: dict[str, Tensor] = {}
        self._pull_back: Optional[Tensor] = None
        self.reduce_values = reduce_values and isinstance(self.pieces, RowPieces)
        self._texts_in_pass = self.texts

    # -------------------------------------------------------------- hooks
    def _keep(self, key: str, reduce: Callable[[Tensor], Tensor]) -> Callable:
        def hook(t: Tensor, hook) -> None:
            self.store[key] = self._own(reduce(t.detach()))

        return hook

    @staticmethod
    def _own(kept: Tensor) -> Tensor:
        """A copy when ``kept`` is a view into a larger tensor, so that the whole activation can be freed."""
        if kept.untyped_storage().nbytes() > kept.numel() * kept.element_size():
            return kept.clone()
        return kept

    def _pass_pull_back(self) -> Tensor:
        """The texts' pull-back G [d, K+1]: it reads only γ and P (no image statistics), so any pooled vector
        builds the fold."""
        if self._pull_back is None:
            m = self.model
            placeholder = torch.zeros(1, m.W_proj.shape[0], device=m.W_proj.device, dtype=self.dtype)
            self._pull_back = output_fold(m, placeholder, self.convention).pull_back(self.texts.to(m.W_proj.device))
        return self._pull_back

    def _value_scores(self, layer: int) -> Callable[[Tensor], Tensor]:
        """v [B, N, H, e] → v · (W_O^h G) [B, H, N, K+1], reduced during the pass."""
        attn = self.model.blocks[layer].attn
        return lambda v: value_dots(v, attn.W_O.detach(), self._pass_pull_back())

    def hook_names(self) -> dict[str, Callable[[Tensor], Tensor]]:
        """Hook name → reduction applied to the activation before it is kept."""
        names = self.pieces.hook_names(self.texts is not None, self._value_scores if self.reduce_values else None)
        names[self.embedding_hook] = lambda t: t
        return names

    def hooks(self) -> list[Hook]:
        return [(name, self._keep(name, reduce)) for name, reduce in self.hook_names().items()]

    def from_cache(self, cache) -> Decomposition:
        """Decompose from a ``transformer_lens.ActivationCache`` that holds the needed hooks."""
        for name, reduce in self.hook_names().items():
            self.store[name] = reduce(cache[name])
        return self.finish()

    # ----------------------------------------------------------- folding
    def finish(self) -> Decomposition:
        """Assemble the kept activations (``decompose.assemble``) and clear them."""
        s = self.store
        if self.reduce_values and self.texts is not None and self.texts is not self._texts_in_pass:
            raise ValueError("texts changed after the pass; use DecompositionCapture(reduce_values=False)")
        if isinstance(self.pieces, NormedMeanPieces):
            fold = self.pieces.output_fold(s, self.dtype, self.convention)
        else:
            fold = output_fold(self.model, s["hook_pooled"].to(self.dtype), self.convention)
        pull_back = None if self.texts is None else fold.pull_back(self.texts)
        raw = self.pieces.raw(s, self.dtype, pull_back, self.reduce_values)
        parts = assemble(raw, fold, s[self.embedding_hook], self.layers, self.convention, self.normalize, self.texts)
        self.store = {}
        return parts


def decompose(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    layers: Optional[Sequence[int]] = None,
    per_source: bool = False,
    texts: Optional[Float[Tensor, "n_texts d_out"]] = None,
    convention: Convention = "equal_share",
    normalize: bool = False,
    extra_hooks: Sequence[Hook] = (),
) -> Decomposition:
    """Split the image embedding into folded parts in one hooked forward pass.

    ``layers`` selects the layers whose heads (and (head, source) pieces) are kept (default: all);
    ``per_source`` keeps the [B, layers, H, N, D] pieces; ``texts`` (unit embeddings [K, D]) returns their
    scores [B, layers, H, N, K] through the pull-back instead. ``extra_hooks`` run in the same pass
    (e.g. interventions).
    """
    capture = DecompositionCapture(model, layers, per_source, texts, convention, normalize)
    with torch.no_grad():
        model.run_with_hooks(images, fwd_hooks=list(extra_hooks) + capture.hooks())
        return capture.finish()
