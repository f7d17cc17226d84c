"""The kept heads' contributions to each image embedding, with what post-hoc ablation needs: the one container
of parts read back from a store folder (``decompose.store``) or kept in memory.

Per image i the folded image embedding splits exactly (docs/decomposition.md) into

    y_i = e_i + Σ_{(l,h) kept} ĉ_{l,h,i} + rest_i,     rest_i = Σ_l mlp_l,i + Σ_{l not kept} attn_l,i

``HeadContributions`` stores e_i, the kept heads and y_i, so rest_i = y_i − e_i − Σ heads is exact and needs
no [n, L, D] stack. The paper's "mean-ablate the MLPs and the earlier attention layers" replaces rest_i by its
dataset mean (from a ``MeanReducer`` on the same images), post-hoc in folded space, exactly as
``ablation.ablate_posthoc(space="folded")`` does on a ``Decomposition``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.errors import BadInputError
from vit_lens_clip.validation import head_index

Head = tuple[int, int]


def kept_layers(n_layers: int, last_n_layers: int) -> list[int]:
    """The last ``last_n_layers`` layer indices of an ``n_layers``-layer model."""
    if not 1 <= last_n_layers <= n_layers:
        raise BadInputError(f"last_n_layers must be between 1 and the model's {n_layers} layers; got {last_n_layers}")
    return list(range(n_layers - last_n_layers, n_layers))


@dataclass
class HeadContributions:
    """Direct contributions of the kept heads to each image embedding, plus what ablations need.

    heads [n, n_kept, H, D]: folded head parts (layers ``layers``); embed [n, D]: folded embedding term;
    embedding [n, D]: the image embedding (divided by its norm when ``normalized``); labels [n] or None;
    indices [n]: dataset indices; means: ``MeanReducer.result()`` over the same images (keys embed, attns,
    mlps, heads [n_kept, H, D], raw.*), for mean-ablation; n_layers: the model's layer count.
    """

    heads: Float[Tensor, "n n_kept n_heads d_out"]
    layers: list[int]
    embed: Float[Tensor, "n d_out"]
    embedding: Float[Tensor, "n d_out"]
    labels: Int[Tensor, " n"] | None
    indices: Int[Tensor, " n"]
    means: dict[str, Tensor]
    normalized: bool
    n_layers: int

    @property
    def n_images(self) -> int:
        return self.heads.shape[0]

    @property
    def n_heads(self) -> int:
        return self.heads.shape[2]

    def head_keys(self) -> list[Head]:
        """(layer, head) of every kept head, layer-major (the order of ``stack()`` flattened)."""
        return [(layer, h) for layer in self.layers for h in range(self.n_heads)]

    def stack(self) -> Float[Tensor, "n_kept n_heads n d_out"]:
        """The heads laid out per head: [n_kept, H, n, D] (what ``text_span`` takes)."""
        return rearrange(self.heads, "n l h d -> l h n d")

    def head_index(self, key: Head) -> tuple[int, int]:
        """Position (kept-layer index, head) of a (layer, head) key; negative layers count from the end."""
        layer, head = head_index(key[0], key[1], self.n_layers, self.n_heads)
        if layer not in self.layers:
            raise ValueError(f"layer {layer} is not among the kept layers {self.layers}")
        if not 0 <= head < self.n_heads:
            raise ValueError(f"head {head} out of range (model has {self.n_heads} heads)")
        return self.layers.index(layer), head

    def rest(self) -> Float[Tensor, "n d_out"]:
        """Σ MLPs + Σ attention layers that are not kept, per image: y − e − Σ kept heads (exact)."""
        return self.embedding - self.embed - self.heads.sum((1, 2))

    def mean_rest(self) -> Float[Tensor, " d_out"]:
        """Dataset mean of ``rest()`` from the MeanReducer: Σ_l mean(mlp_l) + Σ_{l not kept} mean(attn_l)."""
        not_kept = [layer for layer in range(self.n_layers) if layer not in self.layers]
        return self.means["mlps"].sum(0) + self.means["attns"][not_kept].sum(0)

    def compose(
        self,
        heads: Float[Tensor, "n n_kept n_heads d_out"] | None = None,
        mean_ablate_heads: Sequence[Head] = (),
        ablate_rest: bool = True,
        ablate_embed: bool = False,
    ) -> Float[Tensor, "n d_out"]:
        """A post-hoc edited embedding: e (or its mean) + Σ heads (edited) + rest (or its mean).

        ``heads`` replaces the kept heads (e.g. TextSpan reconstructions); ``mean_ablate_heads`` then sets
        the listed (layer, head) parts to their dataset means; ``ablate_rest`` mean-ablates all MLPs and
        all attention layers that are not kept (the paper's protocol).
        """
        if heads is None:
            heads = self.heads
        if heads.shape != self.heads.shape:
            raise ValueError(f"heads must have shape {tuple(self.heads.shape)}, got {tuple(heads.shape)}")
        heads = heads.to(self.heads.dtype)
        if mean_ablate_heads:
            heads = heads.clone()
            for key in mean_ablate_heads:
                i, h = self.head_index(key)
                heads[:, i, h] = self.means["heads"][i, h].to(heads)
        embed = self.means["embed"].to(heads).expand_as(self.embed) if ablate_embed else self.embed
        rest = self.mean_rest().to(heads) if ablate_rest else self.rest()
        return embed + heads.sum((1, 2)) + rest

    def subset(self, mask_or_index: Tensor) -> HeadContributions:
        """The same record restricted to some images (means are kept as they are)."""
        sel = mask_or_index
        return HeadContributions(
            heads=self.heads[sel], layers=list(self.layers), embed=self.embed[sel], embedding=self.embedding[sel],
            labels=None if self.labels is None else self.labels[sel], indices=self.indices[sel],
            means=self.means, normalized=self.normalized, n_layers=self.n_layers,
        )
