"""Parts at rest: the store folder's format, its manifest, and the one reader (docs/store.md).

A store folder holds safetensors shards listed, in row order, by ``manifest.json``; ``ShardWriter``
(``decompose.store_writer``) writes them, ``merge_manifests`` (``decompose.manifests``) and ``collect`` join
several folders into one manifest, and ``StoredParts`` reads any of them back. A shard holds, for its n images,
``embedding`` [n, D], ``indices`` [n], ``labels`` [n] (if the dataset had them) and the stored parts under their
``Decomposition`` names (``PART_FIELDS``). A ``collect`` folder adds ``means.safetensors`` (``MeanReducer``
result) and records the run's identity in its manifest.

Every read checks what the manifest records: the folder is finished, each shard is there, is a whole
safetensors file and has the recorded sha256, and every float it yields is finite. Each failure is a
``UserInputError`` (``BadInputError`` or ``CorruptFileError``) whose one line names the folder or the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import safe_open
from torch import Tensor

from vit_lens_clip.decompose.checkpoint import load_tensors_checked
from vit_lens_clip.decompose.contributions import HeadContributions
from vit_lens_clip.decompose.parts import Decomposition
from vit_lens_clip.errors import BadInputError, CorruptFileError
from vit_lens_clip.integrity import check_safetensors_file, sha256_file

MANIFEST = "manifest.json"
MEANS = "means.safetensors"
EXAMPLES = "examples.safetensors"
# part name (``collect --parts``) -> the Decomposition field a shard stores it under
PART_FIELDS = {"heads": "heads", "layers": "attns", "mlps": "mlps", "embed": "embed", "scores": "source_scores"}
STORE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# the parts each use of a folder needs (``collect --parts`` names)
TEXTSPAN_PARTS: tuple[str, ...] = ("heads", "embed", "means")
ABLATION_PARTS: tuple[str, ...] = ("heads", "embed", "layers", "mlps", "means")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """``folder/manifest.json`` of a finished store folder whose shard files are all there.

    Raises ``BadInputError`` for a folder without a manifest or an unfinished one, ``CorruptFileError`` for an
    unreadable manifest or a missing shard (naming the file).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BadInputError(f"no {MANIFEST} in {folder}: not a finished store folder")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CorruptFileError(f"{path} is unreadable (not JSON); delete the folder to start over") from None
    if not manifest.get("complete"):
        raise BadInputError(f"the shards in {folder} are unfinished (its manifest is not complete); finish that run first")
    gone = [s["file"] for s in manifest["shards"] if not (folder / s["file"]).is_file()]
    if gone:
        raise CorruptFileError(f"shard {folder / gone[0]} listed by {path} is missing")
    return manifest


def parts_hint(needed: Sequence[str]) -> str:
    """The ``collect`` option that stores ``needed``."""
    return f"collect with --parts {','.join(needed)}"


def _finite(value: Tensor, path: Path, name: str) -> Tensor:
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise CorruptFileError(f"{path}: non-finite values (NaN or inf) in {name}; the file is damaged, delete "
                               "the folder and write it again")
    return value


class StoredParts:
    """A finished store folder read back: rows in manifest order (dataset order for a ``collect`` folder).

    Opening reads the manifest (``read_manifest``); each shard is checked (whole file, recorded sha256) the first
    time it is read, and every float tensor read is checked to be finite.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self._checked: set[str] = set()

    @property
    def layers(self) -> list[int]:
        """The kept layers whose heads the shards hold."""
        return list(self.manifest["layers"])

    @property
    def identity(self) -> dict[str, Any] | None:
        """The run identity the writer recorded (``collect``: model, dataset, n, parts, layers, settings)."""
        return self.manifest.get("identity")

    def _shard(self, entry: dict[str, Any]) -> Path:
        """The path of a shard listed by the manifest, checked: whole safetensors file, recorded sha256."""
        path = self.folder / entry["file"]
        if entry["file"] not in self._checked:
            if not path.is_file():  # gone since the manifest was read
                raise CorruptFileError(f"shard {path} listed by {self.folder / MANIFEST} is missing")
            check_safetensors_file(path)
            recorded = entry.get("sha256")
            if recorded is not None and sha256_file(path) != recorded:
                raise CorruptFileError(f"{path} does not match the sha256 recorded in {self.folder / MANIFEST} "
                                       "(damaged or edited); delete the folder and write it again")
            self._checked.add(entry["file"])
        return path

    def read(self, keys: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The named tensors (all when None) of every shard, concatenated in manifest order.

        A key stored in no shard is left out; one stored in only some shards is refused (its rows would not line
        up with the others').
        """
        shards = self.manifest["shards"]
        out: dict[str, list[Tensor]] = {}
        for entry in shards:
            path = self._shard(entry)
            with safe_open(str(path), framework="pt") as f:
                stored = list(f.keys())
                for name in stored if keys is None else [k for k in keys if k in stored]:
                    out.setdefault(name, []).append(_finite(f.get_tensor(name), path, name))
        partial = [k for k, v in out.items() if len(v) != len(shards)]
        if partial:
            raise BadInputError(f"{partial[0]} is stored in only {len(out[partial[0]])} of the {len(shards)} "
                                f"shards of {self.folder}: the folder mixes runs")
        return {k: torch.cat(v) for k, v in out.items()}

    def head_columns(self, heads: Sequence[tuple[int, int]]) -> Float[Tensor, "n_chosen n d_out"]:
        """The per-image parts of some heads, given as (kept-layer position, head): [len(heads), n, D].

        Only the kept layers spanned by ``heads`` are read from each shard (safetensors slices).
        """
        if not heads:
            raise BadInputError("no heads asked for")
        lo, hi = min(i for i, _ in heads), max(i for i, _ in heads) + 1
        columns: list[Tensor] = []
        for entry in self.manifest["shards"]:
            path = self._shard(entry)
            with safe_open(str(path), framework="pt") as f:
                if "heads" not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    raise BadInputError(f"{self.folder} holds no per-head parts; {parts_hint(('heads',))},...")
                block = _finite(f.get_slice("heads")[:, lo:hi], path, "heads")  # [n_shard, hi-lo, H, D]
                columns.append(torch.stack([block[:, i - lo, h] for i, h in heads]))
        return torch.cat(columns, dim=1)

    def row_shape(self, key: str) -> list[int]:
        """Shape of one row of ``key`` (e.g. heads: [n_kept, H, D]), read from the first shard's header."""
        shards = self.manifest["shards"]
        if not shards:
            raise BadInputError(f"{self.folder} holds no shards")
        with safe_open(str(self._shard(shards[0])), framework="pt") as f:
            if key not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                raise BadInputError(f"{self.folder} holds no {key}")
            return list(f.get_slice(key).get_shape())[1:]

    def means(self) -> dict[str, Tensor]:
        """``means.safetensors``: the ``MeanReducer`` result over the folder's images (checked like a shard)."""
        path = self.folder / MEANS
        if not path.is_file():
            raise BadInputError(f"{self.folder} holds no means; {parts_hint(('...', 'means'))}")
        check_safetensors_file(path)
        means = load_tensors_checked(path, self.manifest.get("means_sha256"))
        return {k: _finite(v, path, k) for k, v in means.items()}

    def examples(self) -> dict[str, Any]:
        """``examples.safetensors`` (``collect --examples K``): {"names": [...], "top_scores" [U, k] float64,
        "top_indices" [U, k] (dataset indices)}, rows best first; checked against the manifest's sha256."""
        path = self.folder / EXAMPLES
        if not path.is_file():
            raise BadInputError(f"{self.folder} holds no dataset examples; collect with --examples K")
        check_safetensors_file(path)
        tensors = load_tensors_checked(path, self.manifest.get("examples_sha256"))
        with safe_open(str(path), framework="pt") as f:
            names = json.loads((f.metadata() or {}).get("names", "[]"))
        if len(names) != tensors["top_scores"].shape[0]:
            raise CorruptFileError(f"{path}: {len(names)} unit names for {tensors['top_scores'].shape[0]} rows")
        return {"names": names, **tensors}

    def missing(self, needed: Sequence[str]) -> list[str]:
        """The parts (``collect --parts`` names) in ``needed`` that the folder does not hold."""
        recorded = (self.identity or {}).get("parts")
        if recorded is not None:
            have = set(recorded)
        else:  # a folder written without an identity: what its first shard and its means file hold
            stored = set(self._first_keys())
            have = {part for part, name in PART_FIELDS.items() if name in stored}
            if (self.folder / MEANS).is_file():
                have.add("means")
        return [p for p in needed if p not in have]

    def _first_keys(self) -> list[str]:
        shards = self.manifest["shards"]
        if not shards:
            return []
        with safe_open(str(self._shard(shards[0])), framework="pt") as f:
            return list(f.keys())

    def require(self, needed: Sequence[str], purpose: str) -> None:
        """Raise one line naming the ``collect --parts`` that would give ``needed`` when a part is missing."""
        missing = self.missing(needed)
        if missing:
            raise BadInputError(f"{self.folder} lacks parts {missing} for {purpose}: {parts_hint(needed)}")

    def _normalized(self) -> bool:
        if self.identity is None or "normalize" not in self.identity:
            raise BadInputError(f"{self.folder} records no run identity (whether its parts are normalised); "
                                "read it with read(), or write it with `vit-lens-clip collect`")
        return bool(self.identity["normalize"])

    def contributions(self) -> HeadContributions:
        """The folder as ``HeadContributions`` (needs parts heads, embed, means): TextSpan, completeness, head
        search, spurious cues."""
        self.require(TEXTSPAN_PARTS, "TextSpan")
        rows = self.read(["heads", "embed", "embedding", "indices", "labels"])
        means = self.means()
        return HeadContributions(heads=rows["heads"].float(), layers=self.layers, embed=rows["embed"].float(),
                                 embedding=rows["embedding"], labels=rows.get("labels"), indices=rows["indices"],
                                 means=means, normalized=self._normalized(), n_layers=means["attns"].shape[0])

    def decomposition(self) -> tuple[Decomposition, dict[str, Tensor], Tensor | None]:
        """The folder as (``Decomposition`` of every image, means, labels) for post-hoc ablation
        (``ablation.ablate_posthoc``, ``cumulative_layer_curve``); needs parts heads, embed, layers, mlps, means.

        The parts sum back to the embedding: embed + Σ_l attns_l + Σ_l mlps_l = y (divided by ‖y‖ when normalised).
        """
        self.require(ABLATION_PARTS, "ablation")
        rows = self.read(["heads", "embed", "attns", "mlps", "embedding", "labels"])
        parts = Decomposition(rows["embed"].float(), rows["attns"].float(), rows["mlps"].float(), rows["heads"].float(),
                              self.layers, rows["embedding"], "equal_share", self._normalized())
        return parts, self.means(), rows.get("labels")
