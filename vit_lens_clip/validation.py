"""Strict checks shared by every public function: layer/head indices, model-input images and texts.

Python-style negative indices count from the end (``-1`` is the last layer); anything outside
``[-n, n)`` is an error, never wrapped round.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from vit_lens_clip.errors import BadInputError, OutputFolderError


def layer_index(layer: int, n_layers: int, what: str = "layer") -> int:
    """``layer`` as an index in [0, n_layers); negative values count from the end; out of range raises."""
    if isinstance(layer, bool) or not is_int_like(layer):
        raise BadInputError(f"{what} must be an integer, got {layer!r}")
    layer = int(layer)
    if not -n_layers <= layer < n_layers:
        raise BadInputError(f"{what} {layer} out of range for a model with {n_layers} layers "
                             f"(valid: 0..{n_layers - 1}, or -{n_layers}..-1 from the end)")
    return layer % n_layers


def layer_indices(layers: Optional[Iterable[int]], n_layers: int) -> list[int]:
    """Sorted distinct layer indices (all layers when ``layers`` is None); raises on any out-of-range index."""
    if layers is None:
        return list(range(n_layers))
    scalar = isinstance(layers, (str, bytes)) or (isinstance(layers, Tensor) and layers.ndim == 0)
    if scalar or not isinstance(layers, Iterable):
        raise BadInputError(f"layers must be a list of layer indices, got {layers!r}")
    return sorted({layer_index(l, n_layers) for l in layers})


def head_index(layer: int, head: int, n_layers: int, n_heads: int) -> tuple[int, int]:
    """(layer, head) in range, negatives counted from the end; out of range raises."""
    l = layer_index(layer, n_layers)
    if isinstance(head, bool) or not is_int_like(head):
        raise BadInputError(f"head must be an integer, got {head!r}")
    head = int(head)
    if not -n_heads <= head < n_heads:
        raise BadInputError(f"head {head} out of range for a model with {n_heads} heads per layer "
                            f"(valid: 0..{n_heads - 1})")
    return l, head % n_heads


def head_indices(heads: Iterable[Sequence[int]], n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """Every (layer, head) pair checked with ``head_index``."""
    out = []
    for pair in heads:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise BadInputError(f"heads must be (layer, head) pairs, got {pair!r}")
        out.append(head_index(pair[0], pair[1], n_layers, n_heads))
    return out


def is_int_like(x) -> bool:
    if isinstance(x, int):
        return True
    if isinstance(x, Tensor) and x.numel() == 1 and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool:
        return True
    try:

        return isinstance(x, np.integer)
    except ImportError:  # pragma: no cover
        return False


# Normalised model inputs lie within a few units of 0 (CLIP's mean/std map [0, 1] pixels to about [-1.8, 2.2],
# ImageNet's to [-2.2, 2.7]); raw 0..255 pixels reach far beyond this bound.
MAX_ABS_PIXEL = 25.0


def check_images(images: Tensor) -> None:
    """Model inputs must be preprocessed float images; warn (naming the images) on NaN or inf.

    uint8 (or any integer) input is raw pixels: the model would see values 0..255 instead of normalised
    ones and return plausible but wrong embeddings, so it raises at once (a dtype check, no host read); so do
    float images with any |value| above ``MAX_ABS_PIXEL`` (raw 0..255 pixels that skipped the preprocess). The
    values are checked through ``host_check``: at once (one reduction, one host read per call), or, inside
    ``deferred_checks()``, when the run reads its checks (no host read per batch).
    """
    if not isinstance(images, Tensor):
        raise BadInputError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise BadInputError(
            f"images have dtype {images.dtype}: raw pixels are not model inputs; pass each PIL image through the "
            "model's preprocess (loaded.preprocess) to get normalised float tensors")
    if images.ndim >= 1 and images.shape[0] > 0 and images.numel() > 0:
        peak = images.detach().reshape(images.shape[0], -1).abs().amax(1)  # NaN/inf where an image holds them
        host_check(peak, _image_verdict)


def _image_verdict(peak: Tensor, where: Optional[Tensor]) -> None:
    """The verdict on images' peak |value| (read on the host): warn on NaN/inf, raise on raw pixels."""
    noun, labels = _labels(where, peak.shape[0], "batch indices")
    bad = ~torch.isfinite(peak)
    if bool(bad.any()):
        idx = [labels[i] for i in bad.nonzero().flatten().tolist()]
        shown = ", ".join(map(str, idx[:20])) + (", ..." if len(idx) > 20 else "")
        warnings.warn(f"{len(idx)} input image(s) contain NaN or inf ({noun} {shown}); their outputs "
                      "are not finite, the other images are unaffected", RuntimeWarning, stacklevel=5)
    raw = (peak > MAX_ABS_PIXEL) & ~bad
    if bool(raw.any()):
        first = int(raw.nonzero()[0])
        which = f"image {labels[first]}" if where is None else f"dataset image {labels[first]}"
        raise BadInputError(
            f"{which} has a value of magnitude {peak[first].item():.4g}, beyond the {MAX_ABS_PIXEL:g} of "
            "normalised model inputs: raw 0..255 pixels? pass each PIL image through the model's preprocess "
            "(loaded.preprocess)")


def _labels(where: Optional[Tensor], n: int, noun: str) -> tuple[str, list[int]]:
    """How a verdict names the rows of a batch: positions in the batch, or the dataset indices of a run."""
    if where is None or where.numel() != n:
        return noun, list(range(n))
    return "dataset indices", where.tolist()


# ------------------------------------------------------------------------------------------- host reads
Verdict = Callable[[Tensor, Optional[Tensor]], None]


class HostChecks:
    """Checks whose verdict needs values computed on the device, kept there and read in one go by ``report``.

    ``where`` is the dataset indices of the batch now in the model (a CPU tensor, set by the run's loop; images
    are counted from the start of the block when it is not set); each check added keeps it, so that a verdict
    names dataset images.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Tensor, Verdict, Tensor]] = []
        self.where: Optional[Tensor] = None
        self._seen: dict[Verdict, int] = {}

    def add(self, values: Tensor, verdict: Verdict) -> None:
        where, n = self.where, _rows(values)
        if where is None or where.numel() != n:
            seen = self._seen.get(verdict, 0)
            where, self._seen[verdict] = torch.arange(seen, seen + n), seen + n
        self.pending.append((values.detach(), verdict, where))

    def report(self) -> None:
        """Read every pending value to the host (one copy), then give one verdict per kind of check over all its
        batches (in the order added): warnings, or the first error."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        device = pending[0][0].device
        flat = torch.cat([v.reshape(-1).to(device, torch.float64) for v, _, _ in pending]).cpu()
        grouped: dict[Verdict, tuple[list[Tensor], list[Tensor]]] = {}
        offset = 0
        for values, verdict, where in pending:
            rows = flat[offset : offset + values.numel()].reshape(_rows(values), *values.shape[1:])
            offset += values.numel()
            kept = grouped.setdefault(verdict, ([], []))
            kept[0].append(rows)
            kept[1].append(where)
        for verdict, (values, wheres) in grouped.items():
            verdict(torch.cat(values), torch.cat(wheres))


def _rows(values: Tensor) -> int:
    return values.shape[0] if values.ndim else 1


_ACTIVE: ContextVar[Optional[HostChecks]] = ContextVar("vit_lens_clip_host_checks", default=None)


def host_check(values: Tensor, verdict: Verdict) -> None:
    """Give ``verdict(values on the host, None)`` now, or, inside ``deferred_checks()``, keep ``values`` on the
    device for that run's next ``report()``."""
    active = _ACTIVE.get()
    if active is None:
        verdict(values.detach().cpu(), None)
    else:
        active.add(values, verdict)


@contextlib.contextmanager
def deferred_checks() -> Iterator[HostChecks]:
    """Inside, input checks that need a value (NaN/inf and raw-pixel images, zero embeddings under
    ``normalize=True``) add no host read per batch: their values wait on the device until ``report()`` (called by
    the run: after its first batch, at checkpoints, at the end) or the end of the block, where they warn or raise
    naming the images (by dataset index when ``where`` is set). A run loop's way to keep the device busy."""
    checks = HostChecks()
    token = _ACTIVE.set(checks)
    try:
        yield checks
    finally:
        _ACTIVE.reset(token)
    checks.report()


def check_embeddings(x, width: int, what: str = "texts", unit: bool = False) -> Tensor:
    """``x`` must be a finite float tensor [n, width] (unit rows, to 1e-3, when ``unit``); returns it."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
        raise BadInputError(f"{what} must be a float tensor [n, {width}], got {kind}")
    if x.ndim != 2 or x.shape[1] != width:
        raise BadInputError(f"{what} must be [n, {width}], got shape {tuple(x.shape)}")
    if x.numel() == 0:
        return x
    norms = x.detach().float().norm(dim=1)
    if not bool(torch.isfinite(norms).all()):
        raise BadInputError(f"{what} contain NaN or inf")
    if unit:
        off = (norms - 1).abs()
        if bool((off > 1e-3).any()):
            row = int(off.argmax())
            raise BadInputError(f"{what} must be unit vectors: row {row} has norm {norms[row].item():.4g}; "
                                "normalise with torch.nn.functional.normalize(x, dim=-1)")
    return x


def check_output_folder(path, label: str = "output folder") -> None:
    """An output folder must be a folder (created if missing) that this process can write to; ``label`` names it
    in the messages (e.g. ``--out``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{label} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(f"cannot create {label} {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputFolderError(f"{label} {path} is not writable")


def text_list(texts: Union[str, Sequence[str]]) -> list[str]:
    """Texts as a non-empty list of strings (one string is one text)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise BadInputError("texts must be a non-empty list of strings, got an empty list")
    odd = next((t for t in texts if not isinstance(t, str)), None)
    if odd is not None:
        raise BadInputError(f"texts must be strings (or one tensor of text embeddings), got an item of type "
                            f"{type(odd).__name__}")
    return texts


def text_embeddings(
    texts: Union[str, Sequence[str], Tensor],
    d_out: int,
    encode: Optional[Callable[[list[str]], Tensor]] = None,
) -> Float[Tensor, "n_texts d_out"]:
    """Texts as embeddings [n_texts, d_out]: strings (one, or a list) go through ``encode`` (a CLIP text encoder:
    list of strings -> [n, d_out]); a float tensor [d_out] (one text) or [n_texts, d_out] is taken as it is.

    The one place texts are coerced: an empty list, a non-string item, a missing encoder, a non-float tensor,
    a width other than ``d_out``, no rows, or NaN/inf raise ``BadInputError`` (one line).
    """
    if not isinstance(texts, Tensor):
        texts = text_list(texts)
        if encode is None:
            raise BadInputError("texts given as strings need a text encoder: load the model with "
                                f"vit_lens_clip.load_clip, or pass text embeddings [n_texts, {d_out}]")
        texts = encode(texts)
    if not texts.is_floating_point():
        raise BadInputError(f"text embeddings must be floats, got dtype {texts.dtype}")
    if texts.ndim not in (1, 2) or texts.shape[-1] != d_out:
        raise BadInputError(f"text embeddings must be [n_texts, {d_out}] (or one text [{d_out}]), "
                            f"got {tuple(texts.shape)}")
    if texts.ndim == 1:
        texts = texts[None]
    if texts.shape[0] == 0:
        raise BadInputError("no texts: the text embeddings have 0 rows")
    bad = ~torch.isfinite(texts.detach()).all(-1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise BadInputError(f"text embeddings contain NaN or inf (rows {', '.join(map(str, rows[:20]))}"
                            f"{', ...' if len(rows) > 20 else ''})")
    return texts
