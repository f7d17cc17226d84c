"""Dataset examples of units, streamed: the top-k (and bottom-k) images of every unit by its score.

A unit is anything that gives one number per image:

- a head (``HeadUnit(layer, head, direction)``): its direct contribution ĉ_{l,h} (folded, ``decompose.parts``)
  along a direction in the output space, s = ĉ_{l,h} · d, with d a text embedding or the head's first
  principal direction (``principal_directions``);
- a hook (``HookUnit(name, direction, position)``): the hook's output at one token (or the mean over tokens,
  ``position=None``) along a direction of the hook's width. Its values come from forward hooks: pass
  ``reducer.hooks()`` to ``run_reducers(extra_hooks=...)``.

The kept set of a unit is the k best (score, image index) pairs under one total order: higher score first, on
equal scores the lower dataset index first. Scores stay on the device they were computed on (nothing is read back per batch);
``result()`` returns host tensors. Keeping the k best of a union equals keeping the k best of the k
best of each part, so ``merge`` of per-rank states gives exactly the single-process result, in any order, and a
resumed run (``state_dict``/``load_state_dict``) gives exactly an uninterrupted one. NaN scores are never kept.
The bottom-k are the top-k of the negated scores (negation is exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.datasets.folder import Batch
from vit_lens_clip.decompose.parts import Decomposition
from vit_lens_clip.decompose.reducers import Reducer
from vit_lens_clip.errors import BadInputError

__all__ = ["HeadUnit", "HookUnit", "TopExamples", "principal_directions", "select_top"]


@dataclass(frozen=True)
class HeadUnit:
    """Head (layer, head): score = its folded direct contribution · direction ([d_out])."""

    layer: int
    head: int
    direction: Tensor

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"


@dataclass(frozen=True)
class HookUnit:
    """A hook's output at token ``position`` (None: mean over tokens) · direction ([width of the hook])."""

    hook: str
    direction: Tensor
    position: Optional[int] = 0
    label: Optional[str] = None

    @property
    def name(self) -> str:
        return self.label or f"{self.hook}@{'mean' if self.position is None else self.position}"


Unit = Union[HeadUnit, HookUnit]


def select_top(values: Float[Tensor, "units m"], indices: Int[Tensor, "units m"], k: int
               ) -> tuple[Float[Tensor, "units k2"], Int[Tensor, "units k2"]]:
    """The k best (value, index) pairs of each row: higher value first, equal values by lower index, NaN
    ranked as -inf (``TopExamples.result`` drops them). Runs on the values' device, reading nothing back."""
    order = torch.argsort(indices, dim=1, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    keyed = torch.where(torch.isnan(values), torch.full_like(values, -torch.inf), values)
    order = torch.argsort(keyed, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order), indices.gather(1, order)


def _finite_columns(values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """The leading columns that hold no NaN in any row (NaN sort last, so each row's NaN are at its end)."""
    keep = int((~torch.isnan(values)).sum(1).min()) if values.shape[0] else 0
    return values[:, :keep], indices[:, :keep]


class TopExamples(Reducer):
    """Top-k (and bottom-k) images per unit, with their scores; streamed, resumable, mergeable.

    ``result()``: {"names": [...], "top_scores"/"top_indices": [U, k'], and with ``bottom`` also
    "bottom_scores"/"bottom_indices"}, rows best first (bottom: lowest first). Scores are float64.
    """

    def __init__(self, units: Sequence[Unit], k: int = 16, bottom: bool = False):
        if k < 1:
            raise BadInputError(f"k must be at least 1, got {k}")
        if not units:
            raise BadInputError("TopExamples needs at least one unit")
        self.units, self.k, self.bottom = list(units), k, bottom
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise BadInputError(f"unit names must be distinct: {names}")
        self.names = names
        self._heads = [i for i, u in enumerate(self.units) if isinstance(u, HeadUnit)]
        self._hooks = [i for i, u in enumerate(self.units) if isinstance(u, HookUnit)]
        self._hooked: dict[int, Tensor] = {}
        empty_v, empty_i = torch.empty(len(self.units), 0, dtype=torch.float64), torch.empty(len(self.units), 0, dtype=torch.long)
        self.top = (empty_v, empty_i)
        self.low = (empty_v.clone(), empty_i.clone())

    # ------------------------------------------------------------------ scores

    def hooks(self) -> list[tuple[str, Any]]:
        """Forward hooks that score the hook units (pass to ``run_reducers(extra_hooks=...)``)."""
        out = []
        for i in self._hooks:
            unit = self.units[i]

            def score(t: Tensor, hook, i: int = i, unit: HookUnit = unit) -> None:
                row = t.mean(1) if unit.position is None else t[:, unit.position]
                self._hooked[i] = row.double() @ unit.direction.to(row.device).double()

            out.append((unit.hook, score))
        return out

    def head_scores(self, heads: Float[Tensor, "batch n_kept n_heads d_out"], layers: Sequence[int]
                    ) -> Float[Tensor, "batch n_head_units"]:
        """Scores of the head units from folded head parts of the kept ``layers``."""
        units = [self.units[i] for i in self._heads]
        missing = [u.name for u in units if u.layer not in layers]
        if missing:
            raise BadInputError(f"head units {missing} lie outside the decomposed layers {list(layers)}")
        rows = torch.stack([heads[:, list(layers).index(u.layer), u.head] for u in units], 1)  # [B, U, D]
        directions = torch.stack([u.direction for u in units]).to(rows.device)
        return torch.einsum("bud,ud->bu", rows.double(), directions.double())

    def update(self, parts: Decomposition, batch: Batch) -> None:
        scores = torch.empty(len(batch), len(self.units), dtype=torch.float64, device=parts.heads.device)
        if self._heads:
            scores[:, self._heads] = self.head_scores(parts.heads, parts.layers)
        if self._hooks:
            if len(self._hooked) != len(self._hooks):
                raise ValueError("TopExamples' hook units were not scored: pass reducer.hooks() to "
                                 "run_reducers(extra_hooks=...)")
            scores[:, self._hooks] = torch.stack([self._hooked[i] for i in self._hooks], 1).to(scores.device)
            self._hooked = {}
        self.add(scores, batch.indices)

    def add(self, scores: Float[Tensor, "batch units"], indices: Int[Tensor, " batch"]) -> None:
        """Take a batch of scores (one column per unit) of the images ``indices``."""
        if scores.shape != (len(indices), len(self.units)):
            raise BadInputError(f"scores must be [{len(indices)}, {len(self.units)}], got {tuple(scores.shape)}")
        scores = scores.detach().double()  # stays on its device: no copy to the host per batch
        indices = indices.detach().long().to(scores.device, non_blocking=True)
        if self.top[0].device != scores.device:
            self.top = (self.top[0].to(scores.device), self.top[1].to(scores.device))
            self.low = (self.low[0].to(scores.device), self.low[1].to(scores.device))
        batch_indices = indices.expand(len(self.units), -1)
        self.top = self._merged(self.top, (scores.T, batch_indices))
        if self.bottom:
            self.low = self._merged(self.low, (-scores.T, batch_indices))

    def _merged(self, a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return select_top(torch.cat([a[0], b[0]], 1), torch.cat([a[1], b[1]], 1), self.k)

    # ------------------------------------------------------------------ results and state

    def result(self) -> dict[str, Any]:
        """Host tensors; images whose score was NaN are left out (each row keeps the same count)."""
        values, indices = _finite_columns(self.top[0].cpu(), self.top[1].cpu())
        out: dict[str, Any] = {"names": list(self.names), "top_scores": values.clone(), "top_indices": indices.clone()}
        if self.bottom:
            values, indices = _finite_columns(self.low[0].cpu(), self.low[1].cpu())
            out["bottom_scores"], out["bottom_indices"] = -values, indices.clone()
        return out

    def state_dict(self) -> dict[str, Tensor]:
        state = {"top.values": self.top[0], "top.indices": self.top[1]}
        if self.bottom:
            state.update({"bottom.values": self.low[0], "bottom.indices": self.low[1]})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:
            return
        if state["top.values"].shape[0] != len(self.units):
            raise BadInputError(f"state of {state['top.values'].shape[0]} units for a reducer of {len(self.units)}")
        self.top = (state["top.values"].double(), state["top.indices"].long())
        if self.bottom:
            if "bottom.values" not in state:
                raise BadInputError("the state has no bottom-k (saved with bottom=False)")
            self.low = (state["bottom.values"].double(), state["bottom.indices"].long())
        else:
            self.low = (self.low[0].to(self.top[0].device), self.low[1].to(self.top[0].device))

    def merge(self, other: "TopExamples") -> None:
        if other.names != self.names or other.k != self.k or other.bottom != self.bottom:
            raise BadInputError("TopExamples merge needs the same units, k and bottom setting")
        device = self.top[0].device
        self.top = self._merged(self.top, tuple(t.to(device) for t in other.top))
        if self.bottom:
            self.low = self._merged(self.low, tuple(t.to(device) for t in other.low))


def principal_directions(heads: Float[Tensor, "n n_kept n_heads d_out"]) -> Float[Tensor, "n_kept n_heads d_out"]:
    """Each head's first principal direction of its centred contributions, signed so that the images' scores
    have a positive third moment (the long tail is the top), ties broken by a positive largest coordinate."""
    x = heads.double()
    centred = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred.permute(1, 2, 0, 3), full_matrices=False)  # [n_kept, H, ., D]
    d = vh[..., 0, :]
    scores = torch.einsum("nlhd,lhd->lhn", centred, d)
    skew = (scores ** 3).mean(-1)
    biggest = d.gather(-1, d.abs().argmax(-1, keepdim=True))[..., 0]
    sign = torch.where(skew.abs() > 1e-12 * scores.pow(2).mean(-1).pow(1.5).clamp_min(1e-300),
                       skew.sign(), biggest.sign())
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (d * sign[..., None]).to(heads.dtype if heads.is_floating_point() else torch.float32)
