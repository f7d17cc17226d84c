"""Dataset examples of units, streamed: the top-k (and bottom-k) images of every unit by its score.

A unit is anything that gives one number per image:

- a head (``HeadUnit(layer, head, direction)``): its direct contribution ĉ_{l,h} (folded, ``decompose.parts``)
  along a direction in the output space, s = ĉ_{l,h} · d, with d a text embedding or the head's first
  principal direction (``principal_directions``);
  (``direction=None``: along the image's own embedding, s = ĉ_{l,h} · y/‖y‖², the head's share of that image's
  embedding; it needs no pass before the collection);
- a hook (``HookUnit(name, direction, position)``): the hook's output at one token (or the mean over tokens,
  ``position=None``) along a direction of the hook's width;
- many features of one hook at once (``HookFeatures(hook, names, encode, pool)``): f = encode(hook output)
  [B, T, m] (None: the hook output itself, e.g. MLP neurons' ``hook_post``; an SAE's ``encode`` for its
  features), pooled over tokens (max, mean or the class token) to one activation per image and feature.
Hook values come from forward hooks: pass ``reducer.hooks()`` to ``run_reducers(extra_hooks=...)``.

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
from typing import Any, Callable, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_lens_clip.datasets.folder import Batch
from vit_lens_clip.decompose.parts import Decomposition
from vit_lens_clip.decompose.reducers import Reducer
from vit_lens_clip.errors import BadInputError

__all__ = ["HeadUnit", "HookFeatures", "HookUnit", "TopExamples", "brute_force_top", "principal_directions",
           "select_top"]


@dataclass(frozen=True)
class HeadUnit:
    """Head (layer, head): score = its folded direct contribution · direction ([d_out]); direction None: · y/‖y‖²
    with y the image's own embedding (the head's share of it)."""

    layer: int
    head: int
    direction: Optional[Tensor] = None

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


@dataclass(frozen=True, eq=False)
class HookFeatures:
    """m features of one hook: encode(hook output [B, T, W]) → [B, T, m] (None: the output itself), pooled over
    tokens by ``pool`` ("max", "mean" or "cls") to [B, m]. One unit per name. ``source``: the module behind
    ``encode`` when there is one (an SAE), for those that describe the features later (the explorer)."""

    hook: str
    names: tuple[str, ...]
    encode: Optional[Callable[[Tensor], Tensor]] = None
    pool: str = "max"
    source: Any = None

    def __post_init__(self) -> None:
        if self.pool not in ("max", "mean", "cls"):
            raise BadInputError(f"pool must be max, mean or cls, got {self.pool!r}")

    def activations(self, t: Float[Tensor, "batch tokens width"]) -> Float[Tensor, "batch tokens m"]:
        """The features at every token."""
        return t if self.encode is None else self.encode(t)

    def scores(self, t: Float[Tensor, "batch tokens width"]) -> Float[Tensor, "batch m"]:
        """One activation per image and feature (pooled over tokens)."""
        f = self.activations(t)
        if f.shape[-1] != len(self.names):
            raise BadInputError(f"{self.hook}: {f.shape[-1]} features for {len(self.names)} names")
        return f.amax(1) if self.pool == "max" else f.mean(1) if self.pool == "mean" else f[:, 0]


Unit = Union[HeadUnit, HookUnit, HookFeatures]


def brute_force_top(scores: Float[Tensor, "n units"], indices: Int[Tensor, " n"], k: int
                    ) -> tuple[Float[Tensor, "units k2"], Int[Tensor, "units k2"]]:
    """The reference of ``TopExamples``: per unit, all (score, index) pairs sorted at once by (−score, index)
    in Python, NaN left out, the first k kept."""
    values, rows = [], []
    for u in range(scores.shape[1]):
        pairs = sorted((-float(s), int(i)) for s, i in zip(scores[:, u].detach(), indices) if s == s)[:k]
        values.append([-s for s, _ in pairs])
        rows.append([i for _, i in pairs])
    width = min(map(len, rows)) if rows else 0
    return (torch.tensor([v[:width] for v in values], dtype=torch.float64).reshape(len(rows), width),
            torch.tensor([r[:width] for r in rows], dtype=torch.long).reshape(len(rows), width))


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
        names: list[str] = []
        self._columns: list[slice] = []  # each unit's columns of the score matrix
        for u in self.units:
            new = list(u.names) if isinstance(u, HookFeatures) else [u.name]
            self._columns.append(slice(len(names), len(names) + len(new)))
            names += new
        if len(set(names)) != len(names):
            raise BadInputError(f"unit names must be distinct: {names[:20]}")
        self.names = names
        self._heads = [i for i, u in enumerate(self.units) if isinstance(u, HeadUnit)]
        self._hooks = [i for i, u in enumerate(self.units) if not isinstance(u, HeadUnit)]
        self._hooked: dict[int, Tensor] = {}
        empty_v, empty_i = torch.empty(len(names), 0, dtype=torch.float64), torch.empty(len(names), 0, dtype=torch.long)
        self.top = (empty_v, empty_i)
        self.low = (empty_v.clone(), empty_i.clone())

    # ------------------------------------------------------------------ scores

    def hooks(self) -> list[tuple[str, Any]]:
        """Forward hooks that score the hook units (pass to ``run_reducers(extra_hooks=...)``)."""
        out = []
        for i in self._hooks:
            unit = self.units[i]

            def score(t: Tensor, hook, i: int = i, unit: Union[HookUnit, HookFeatures] = unit) -> None:
                if isinstance(unit, HookFeatures):
                    self._hooked[i] = unit.scores(t).double().reshape(t.shape[0], -1)
                    return
                row = t.mean(1) if unit.position is None else t[:, unit.position]
                self._hooked[i] = (row.double() @ unit.direction.to(row.device).double())[:, None]

            out.append((unit.hook, score))
        return out

    def head_scores(self, heads: Float[Tensor, "batch n_kept n_heads d_out"], layers: Sequence[int],
                    total: Optional[Float[Tensor, "batch d_out"]] = None) -> Float[Tensor, "batch n_head_units"]:
        """Scores of the head units from folded head parts of the kept ``layers``; ``total``: the sum of all
        parts (y, or y/‖y‖ when normalised), needed by units without a direction (share: ĉ·t/‖t‖²)."""
        units = [self.units[i] for i in self._heads]
        missing = [u.name for u in units if u.layer not in layers]
        if missing:
            raise BadInputError(f"head units {missing} lie outside the decomposed layers {list(layers)}")
        rows = torch.stack([heads[:, list(layers).index(u.layer), u.head] for u in units], 1).double()  # [B, U, D]
        fixed = [u.direction is not None for u in units]
        if all(fixed):
            directions = torch.stack([u.direction for u in units]).to(rows.device)
            return torch.einsum("bud,ud->bu", rows, directions.double())
        if total is None:
            raise BadInputError("head units without a direction need the parts' total (the image embedding)")
        along = total.double() / total.double().pow(2).sum(-1, keepdim=True)  # [B, D]
        directions = torch.stack([u.direction.double().to(rows.device) if u.direction is not None
                                  else torch.zeros(rows.shape[-1], dtype=torch.float64, device=rows.device)
                                  for u in units])
        own = torch.tensor(fixed, device=rows.device)
        return torch.where(own, torch.einsum("bud,ud->bu", rows, directions), torch.einsum("bud,bd->bu", rows, along))

    def update(self, parts: Decomposition, batch: Batch) -> None:
        scores = torch.empty(len(batch), len(self.names), dtype=torch.float64, device=parts.heads.device)
        if self._heads:
            total = parts.total() if any(self.units[i].direction is None for i in self._heads) else None
            head_scores = self.head_scores(parts.heads, parts.layers, total)
            for j, i in enumerate(self._heads):
                scores[:, self._columns[i]] = head_scores[:, j:j + 1]
        if self._hooks:
            if len(self._hooked) != len(self._hooks):
                raise ValueError("TopExamples' hook units were not scored: pass reducer.hooks() to "
                                 "run_reducers(extra_hooks=...)")
            for i in self._hooks:
                scores[:, self._columns[i]] = self._hooked[i].to(scores.device)
            self._hooked = {}
        self.add(scores, batch.indices)

    def add(self, scores: Float[Tensor, "batch units"], indices: Int[Tensor, " batch"]) -> None:
        """Take a batch of scores (one column per unit) of the images ``indices``."""
        if scores.shape != (len(indices), len(self.names)):
            raise BadInputError(f"scores must be [{len(indices)}, {len(self.names)}], got {tuple(scores.shape)}")
        scores = scores.detach().double()  # stays on its device: no copy to the host per batch
        indices = indices.detach().long().to(scores.device, non_blocking=True)
        if self.top[0].device != scores.device:
            self.top = (self.top[0].to(scores.device), self.top[1].to(scores.device))
            self.low = (self.low[0].to(scores.device), self.low[1].to(scores.device))
        batch_indices = indices.expand(len(self.names), -1)
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
        """Host copies of the kept (score, index) pairs (what a checkpoint saves and a merge gathers)."""
        state = {"top.values": self.top[0].cpu(), "top.indices": self.top[1].cpu()}
        if self.bottom:
            state.update({"bottom.values": self.low[0].cpu(), "bottom.indices": self.low[1].cpu()})
        return state

    def merge_state(self, state: dict[str, Tensor]) -> None:
        """Merge another reducer's ``state_dict`` (of the same units, k and bottom) into this one."""
        other = TopExamples.__new__(TopExamples)
        other.names, other.k, other.bottom = self.names, self.k, self.bottom
        other.top = (state["top.values"].double(), state["top.indices"].long())
        other.low = ((state["bottom.values"].double(), state["bottom.indices"].long()) if self.bottom
                     else (self.low[0].cpu(), self.low[1].cpu()))
        self.merge(other)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:
            return
        if state["top.values"].shape[0] != len(self.names):
            raise BadInputError(f"state of {state['top.values'].shape[0]} units for a reducer of {len(self.names)}")
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
