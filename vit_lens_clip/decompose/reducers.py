"""Cache reducers: streamed over a dataset, memory bounded, resumable, mergeable across processes.

A reducer sees each batch's ``Decomposition`` (and the ``Batch`` it came from) and keeps a small state:

    class MyReducer(Reducer):
        def update(self, parts, batch):  # stays on the device: no .item(), .cpu() or bool(tensor) per batch
            self.best = torch.maximum(self.best, parts.heads.norm(dim=-1).amax(0))

``run_reducers`` makes one hooked forward pass per batch and feeds every reducer. With ``checkpoint_dir``
it saves all reducer states every ``checkpoint_every`` batches, atomically (``decompose.checkpoint``); a
killed run restarts from the last checkpoint and, since batches are the same, produces bitwise-identical
results. The checkpoint records the identity of its inputs (model weights, data, settings) and a resume
on anything else is refused.

The per-batch path (``run_step``: the hooked forward, the decomposition, every reducer's ``update``) reads
nothing back to the host: input checks that need a value are deferred (``validation.deferred_checks``) and read
after the first batch, at each checkpoint and at the end; reducers copy to the host with ``to_host`` (pinned,
non-blocking) and wait for those copies only when they write or return them (``host_ready``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vit_lens_clip import validation
from vit_lens_clip.datasets.folder import Batch, collate_images
from vit_lens_clip.decompose import checkpoint as ckpt_io
from vit_lens_clip.decompose.fold import Convention
from vit_lens_clip.decompose.parts import Decomposition, DecompositionCapture
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.model.hooked_vit import HookedViT


def to_host(t: Tensor) -> Tensor:
    """``t`` copied to host memory without waiting for the device (a pinned buffer, non-blocking copy): call
    ``host_ready()`` before reading it. A CPU tensor is returned as it is."""
    t = t.detach()
    if t.device.type == "cpu":
        return t
    if t.device.type == "cuda":
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return out.copy_(t, non_blocking=True)
    return t.to("cpu", non_blocking=True)


def host_ready() -> None:
    """Wait for the copies ``to_host`` started (once per shard or result, never per batch)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Reducer:
    """Base reducer. Override ``update`` and ``result``; override the state methods to resume and merge.

    Class attributes say what the decomposition must contain: ``needs_per_source`` ([B, L, H, N, D] pieces)
    and ``needs_source_scores`` (their text scores; the texts are given to ``run_reducers``).
    """

    needs_per_source: bool = False
    needs_source_scores: bool = False

    def update(self, parts: Decomposition, batch: Batch) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError

    def flush(self) -> None:
        """Write buffered data before a checkpoint (sharded reducers)."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise NotImplementedError(f"{type(self).__name__} cannot resume")

    def merge(self, other: "Reducer") -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot merge")


PART_NAMES = ("embed", "attns", "mlps", "heads")


class _SummedMean(Reducer):
    """Mean over images kept as float64 sums per key and an image count: mean = Σ sums / Σ counts, so states
    from several processes or checkpoints merge exactly. Subclasses decide what is summed."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def _add(self, name: str, value: Tensor) -> None:
        """Add ``value`` summed over its first (batch) dimension to the sum kept under ``name``."""
        total = value.detach().double().sum(0)
        self.sums[name] = self.sums[name] + total if name in self.sums else total

    def result(self) -> dict[str, Tensor]:
        """Mean of each kept value (batch dimension removed), as float32."""
        if self.count == 0:
            raise ValueError(f"{type(self).__name__} saw no images")
        return {k: (v / self.count).float() for k, v in self.sums.items()}

    def state_dict(self) -> dict[str, Tensor]:
        return {**{f"sum.{k}": v for k, v in self.sums.items()}, "count": torch.tensor(self.count)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.sums = {k[4:]: v for k, v in state.items() if k.startswith("sum.")}
        self.count = int(state["count"]) if "count" in state else 0

    def merge(self, other: "_SummedMean") -> None:
        for k, v in other.sums.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += other.count

    def merge_from(self, states: Sequence[dict[str, Tensor]]) -> None:
        """Add other processes' ``state_dict()``s (float64 sums and counts), in the order given."""
        for state in states:
            other = _SummedMean()
            other.load_state_dict(state)
            self.merge(other)


class MeanReducer(_SummedMean):
    """Running mean of every part over the dataset: sums and a count, so partial means merge exactly.

    Keys: embed, attns, mlps, heads (folded parts), and raw.* (the same pieces in the residual stream), plus
    ``normalized``: 1.0 when the parts were divided by ‖y‖, else 0.0 (the mean of that per-image indicator, a
    float like every other entry), so that ``ablate_posthoc`` can refuse to swap these means into parts of the
    other scale.
    """

    def __init__(self, per_source: bool = False):
        super().__init__()
        self.needs_per_source = per_source
        self.normalized: Optional[bool] = None

    def _note_normalized(self, flag: Optional[bool]) -> None:
        if flag is None:
            return
        if self.normalized is not None and self.normalized != flag:
            raise BadInputError("MeanReducer got parts decomposed both with and without normalize=True: their means "
                                "would mix two scales")
        self.normalized = bool(flag)

    def result(self) -> dict[str, Tensor]:
        out = super().result()
        if self.normalized is not None:
            out["normalized"] = torch.tensor(float(self.normalized))
        return out

    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        if self.normalized is not None:
            state["normalized"] = torch.tensor(float(self.normalized))
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        super().load_state_dict(state)
        self.normalized = bool(state["normalized"]) if "normalized" in state else None

    def merge(self, other: "_SummedMean") -> None:
        self._note_normalized(getattr(other, "normalized", None))
        super().merge(other)

    def merge_from(self, states: Sequence[dict[str, Tensor]]) -> None:
        for state in states:
            other = MeanReducer()
            other.load_state_dict(state)
            self.merge(other)

    def update(self, parts: Decomposition, batch: Batch) -> None:
        self._note_normalized(parts.normalized)
        names = PART_NAMES + (("head_sources",) if self.needs_per_source else ())
        for name in names:
            self._add(name, getattr(parts, name))
        for name, value in parts.raw.items():
            self._add(f"raw.{name}", value)
        self.count += parts.embed.shape[0]


class ActivationMeanReducer(_SummedMean):
    """Per-position mean of raw activations (e.g. ``blocks.3.hook_attn_out``), for intervention ablation.

    Its values come from forward hooks, not from the decomposition: pass it to
    ``run_reducers(activation_means=[reducer])``, or, like ``SecondOrderReducer``, as a reducer with
    ``extra_hooks=reducer.hooks()``. It resumes and merges like ``MeanReducer``.
    """

    def __init__(self, names: Sequence[str]):
        super().__init__()
        self.names = list(names)
        self._batch_size = 0

    def hooks(self) -> list[tuple[str, Any]]:
        def keep(t: Tensor, hook) -> None:
            self._add(hook.name, t)
            self._batch_size = t.shape[0]

        return [(n, keep) for n in self.names]

    def end_batch(self) -> None:
        """Count the images of the batch the hooks just saw."""
        self.count += self._batch_size
        self._batch_size = 0

    def update(self, parts: Decomposition, batch: Batch) -> None:
        """As a reducer: count the batch its hooks (passed as ``extra_hooks``) just saw."""
        if self._batch_size == 0:
            raise ValueError("ActivationMeanReducer's hooks did not run: pass reducer.hooks() to "
                             "run_reducers(extra_hooks=...), or the reducer to activation_means=")
        self.end_batch()


class TextScoreReducer(Reducer):
    """Per-image scores of each head's part against texts, [n_images, n_layers_kept, H, K], kept in memory."""

    def __init__(self, texts: Float[Tensor, "n_texts d_out"]):
        width = texts.shape[-1] if isinstance(texts, Tensor) and texts.ndim == 2 else 0
        self.texts = validation.check_embeddings(texts, width, "texts").float()  # once, not per batch
        self.scores: list[Tensor] = []
        self.indices: list[Tensor] = []

    def update(self, parts: Decomposition, batch: Batch) -> None:
        if self.texts.device != parts.heads.device:
            self.texts = self.texts.to(parts.heads.device, non_blocking=True)
        self.scores.append(to_host(parts.heads @ self.texts.to(parts.heads.dtype).T))  # Decomposition.head_scores
        self.indices.append(to_host(batch.indices))

    def result(self) -> dict[str, Tensor]:
        host_ready()
        return {"scores": torch.cat(self.scores), "indices": torch.cat(self.indices)}

    def state_dict(self) -> dict[str, Tensor]:
        if not self.scores:
            return {}
        return self.result()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            self.scores, self.indices = [state["scores"]], [state["indices"]]


class StackReducer(Reducer):
    """Per-image parts kept in memory (for small datasets): the named ``Decomposition`` fields, concatenated."""

    def __init__(self, fields: Sequence[str] = ("embed", "attns", "mlps", "heads", "embedding")):
        self.fields = tuple(fields)
        self.rows: dict[str, list[Tensor]] = {}
        self.layers: list[int] = []

    def update(self, parts: Decomposition, batch: Batch) -> None:
        self.layers = parts.layers
        values = {f: getattr(parts, f) for f in self.fields}
        values["indices"] = batch.indices
        if batch.labels is not None:
            values["labels"] = batch.labels
        for k, v in values.items():
            self.rows.setdefault(k, []).append(to_host(v))

    def result(self) -> dict[str, Tensor]:
        if not self.rows:
            raise ValueError("StackReducer saw no images")
        host_ready()
        return {k: torch.cat(v) for k, v in self.rows.items()}

    def state_dict(self) -> dict[str, Tensor]:
        return self.result() if self.rows else {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.rows = {k: [v] for k, v in state.items()}


@dataclass
class RunSummary:
    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resumed_from: int = 0


def _identity(model: HookedViT, dataset: Dataset, reducers, activation_means, batch_size: int, layers, texts,
              convention: str, normalize: bool) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: model weights, data, and every setting that shapes the state."""
    return ckpt_io.run_identity(
        model, dataset, n=len(dataset), batch_size=batch_size, layers=list(layers), convention=convention,
        normalize=normalize, texts_sha256=None if texts is None else ckpt_io.tensor_sha256(texts.float()),
        reducers=[type(r).__name__ for r in reducers],
        activation_means=[list(a.names) for a in activation_means],
    )


def run_reducers(
    model: HookedViT,
    dataset: Dataset,
    reducers: Sequence[Reducer],
    batch_size: int = 32,
    layers: Optional[Sequence[int]] = None,
    texts: Optional[Float[Tensor, "n_texts d_out"]] = None,
    convention: Convention = "equal_share",
    normalize: bool = False,
    extra_hooks: Sequence[tuple[str, Any]] = (),
    activation_means: Sequence[ActivationMeanReducer] = (),
    checkpoint_dir: Optional[str | Path] = None,
    checkpoint_every: int = 50,
    num_workers: int = 0,
    pin_memory: bool = False,
    progress: bool = True,
    device: Optional[torch.device] = None,
) -> RunSummary:
    """One hooked forward pass per batch, every reducer updated; resumable from ``checkpoint_dir``.

    The dataset yields dicts (see ``datasets.folder``); unreadable items are skipped and listed.
    """
    device = device or model.W_proj.device
    layers = validation.layer_indices(layers, model.cfg.n_layers)
    if batch_size < 1 or checkpoint_every < 1:
        raise BadInputError(f"batch_size and checkpoint_every must be at least 1; got {batch_size}, {checkpoint_every}")
    per_source = any(r.needs_per_source for r in reducers)
    if any(r.needs_source_scores for r in reducers) and texts is None:
        raise ValueError("a reducer needs source scores: pass texts=")
    summary = RunSummary()
    summary.skipped += list(getattr(dataset, "skipped", []))  # inputs the dataset itself left out
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty")
    start = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    identity = None
    stateful = list(reducers) + list(activation_means)
    if ckpt:
        identity = _identity(model, dataset, reducers, activation_means, batch_size, layers, texts, convention, normalize)
        found = ckpt_io.read_checkpoint(ckpt, identity)
        if found is not None:
            progress_state, state = found
            for i, r in enumerate(stateful):
                r.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}.")})
            start = summary.resumed_from = progress_state["done"]
            summary.skipped = [tuple(s) for s in progress_state["skipped"]]
            summary.images = progress_state["images"]
    if start >= n:
        return summary

    def save_checkpoint(done: int) -> None:
        if ckpt is None:
            return
        state = {f"{i}.{k}": v.contiguous() for i, r in enumerate(stateful) for k, v in r.state_dict().items()}
        info = {"identity": identity, "done": done, "images": summary.images, "skipped": summary.skipped}
        ckpt_io.write_checkpoint(ckpt, state, info)

    loader = DataLoader(Subset(dataset, range(start, n)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_images, pin_memory=pin_memory)
    done = start
    bar = tqdm(loader, desc="decomposing", disable=not progress, initial=start // batch_size,
               total=(n + batch_size - 1) // batch_size)
    capture = DecompositionCapture(model, layers, per_source, texts, convention, normalize)  # texts checked once
    first = True
    with validation.deferred_checks() as checks:
        for step, batch in enumerate(bar, start=1):
            done = min(n, done + batch_size)
            summary.skipped += batch.skipped
            if batch.images is not None:
                checks.where = batch.indices
                run_step(model, batch, capture, reducers, extra_hooks, activation_means, device)
                summary.images += len(batch)
                if first:  # raw pixels (a missing preprocess) fail on the first batch, not after the whole run
                    checks.report()
                    first = False
            if step % checkpoint_every == 0 and done < n:
                checks.report()  # nothing unchecked goes into a checkpoint
                save_checkpoint(done)
        checks.report()
    for r in reducers:
        r.flush()
    save_checkpoint(n)
    return summary


def run_step(model: HookedViT, batch: Batch, capture: DecompositionCapture, reducers: Sequence[Reducer],
             extra_hooks: Sequence[tuple[str, Any]], activation_means: Sequence[ActivationMeanReducer],
             device: torch.device) -> None:
    """One batch of ``run_reducers``: the hooked forward, the decomposition, every reducer's update. Nothing here
    reads a value back to the host (tests/integration/test_host_syncs.py counts)."""
    hooks = list(extra_hooks) + [h for a in activation_means for h in a.hooks()] + capture.hooks()
    with torch.no_grad():
        model.run_with_hooks(batch.images.to(device, non_blocking=True), fwd_hooks=hooks)
        parts = capture.finish()
    for a in activation_means:
        a.end_batch()
    for r in reducers:
        r.update(parts, batch)
