"""Reducing a spurious cue by mean-ablating heads (docs/spurious.md, the paper's Waterbirds experiment).

Two-class zero-shot (e.g. "a photo of a landbird" / "a photo of a waterbird") on an evaluation set whose
images carry a group (class × background). For every setting the worst-group accuracy (lowest accuracy over
groups) and the average accuracy (over all images) are reported:

* baseline: the unablated model;
* extra ablations only: all MLPs and the attention layers before the kept (last 4) layers mean-ablated;
* random heads: the extra ablations plus as many random heads from the kept layers as role heads,
  best worst-group accuracy of 5 seeds;
* role heads: the extra ablations plus the heads whose TextSpan texts are about places/backgrounds, picked
  automatically by topic queries (and, if given, a hand-picked list).

All means are taken over the evaluation set itself and every ablation is post-hoc in folded space
(``HeadContributions.compose``). Nothing is fitted to the group labels: they are only used to score.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import Dataset

from vit_lens_clip.decompose import Decomposition, StackReducer, run_reducers
from vit_lens_clip.decompose.contributions import Head, HeadContributions
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.methods.textspan.algorithm import TextSpanResult
from vit_lens_clip.methods.textspan.pools import embed_texts_cached, load_pool
from vit_lens_clip.methods.textspan.runs import (
    TextSpanTable,
    collect_head_contributions,
    default_role_head_count,
    heads_by_textspan_topic,
    heads_for_queries,
)
from vit_lens_clip.methods.zeroshot import build_classifier, logits

PLACE_QUERIES: tuple[str, ...] = ("a place", "a location", "a background")


class LabelGroupItems(Dataset):
    """Reducer items from a dataset whose items hold ``image``, ``label`` and ``group``.

    The reducers carry one integer label per image, so label and group travel packed as
    ``group * n_classes + label`` (``unpack`` undoes it); this survives workers and resumed runs.
    """

    def __init__(self, dataset: Dataset, n_classes: int):
        if n_classes < 1:
            raise ValueError("n_classes must be positive")
        self.dataset, self.n_classes = dataset, n_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        out: dict[str, Any] = {"index": i, "name": str(item.get("name", i))}
        if item.get("error") is not None:
            out["error"] = item["error"]
            return out
        label, group = item.get("label"), item.get("group")
        if label is None or group is None:
            raise ValueError(f"item {i} lacks a label or a group; the spurious experiment needs both")
        if not 0 <= int(label) < self.n_classes or int(group) < 0:
            raise ValueError(f"item {i}: label {label} not in 0..{self.n_classes - 1} or negative group {group}")
        out["image"] = item["image"]
        out["label"] = int(group) * self.n_classes + int(label)
        return out

    def unpack(self, codes: Int[Tensor, " n"]) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"]]:
        """(labels, groups) from packed codes."""
        return codes % self.n_classes, codes // self.n_classes


@dataclass
class GroupAccuracy:
    worst_group: float
    average: float
    per_group: dict[int, float]


def group_accuracy(
    predictions: Int[Tensor, " n"], labels: Int[Tensor, " n"], groups: Int[Tensor, " n"]
) -> GroupAccuracy:
    """Worst-group accuracy (min over groups present), average accuracy over images, and each group's."""
    if not predictions.shape == labels.shape == groups.shape:
        raise ValueError("predictions, labels and groups must have the same shape")
    correct = (predictions.cpu() == labels.cpu()).double()
    groups = groups.cpu()
    per_group = {int(g): float(correct[groups == g].mean()) for g in torch.unique(groups)}
    return GroupAccuracy(min(per_group.values()), float(correct.mean()), per_group)


@dataclass
class SpuriousRow:
    setting: str
    worst_group: float
    average: float
    per_group: dict[int, float]
    heads: list[Head] = field(default_factory=list)
    note: str = ""


@dataclass
class SpuriousTable:
    """Rows: baseline, extra ablations only, random heads (best of seeds), role heads (auto / hand-picked)."""

    rows: list[SpuriousRow]
    group_names: dict[int, str]
    layers: list[int]
    n_images: int
    role_heads: list[Head]
    head_scores: list[tuple[Head, float]] = field(default_factory=list)
    picker: str = ""
    role_head_texts: dict[Head, list[str]] = field(default_factory=dict)
    classifier: Tensor | None = None  # [d_out, n_classes], the zero-shot classifier the rows were scored with

    def row(self, setting_prefix: str) -> SpuriousRow:
        """The first row whose setting starts with ``setting_prefix``."""
        for row in self.rows:
            if row.setting.startswith(setting_prefix):
                return row
        raise KeyError(setting_prefix)

    def to_dict(self) -> dict[str, Any]:
        label = lambda key: f"L{key[0]}.H{key[1]}"
        name = lambda g: self.group_names.get(g, f"group {g}")
        return {
            "n_images": self.n_images,
            "layers": self.layers,
            "picker": self.picker,
            "role_heads": [label(h) for h in self.role_heads],
            "role_head_texts": {label(h): texts for h, texts in self.role_head_texts.items()},
            "head_scores": [[label(h), s] for h, s in self.head_scores],
            "rows": [
                {"setting": r.setting, "worst_group": r.worst_group, "average": r.average,
                 "per_group": {name(g): a for g, a in r.per_group.items()},
                 "heads": [label(h) for h in r.heads], "note": r.note}
                for r in self.rows
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_markdown(self) -> str:
        groups = sorted({g for r in self.rows for g in r.per_group})
        header = "| setting | worst-group | average | " + " | ".join(self.group_names.get(g, f"group {g}") for g in groups) + " |"
        lines = [
            (f"Spurious cue: worst-group and average zero-shot accuracy ({self.n_images} images; "
            f"'extra ablations' = all MLPs and attention layers before layer {min(self.layers)} mean-ablated)"),
            "",
            header,
            "|" + "---|" * (3 + len(groups)),
        ]
        for r in self.rows:
            cells = " | ".join(f"{r.per_group.get(g, float('nan')):.1%}" for g in groups)
            lines.append(f"| {r.setting} | {r.worst_group:.1%} | {r.average:.1%} | {cells} |")
        lines.append("")
        if self.role_heads:
            lines.append(f"Role heads ({self.picker}): " + ", ".join(f"L{l}.H{h}" for l, h in self.role_heads))
            for (l, h), texts in self.role_head_texts.items():
                lines.append(f"- L{l}.H{h}: " + "; ".join(texts))
        return "\n".join(lines) + "\n"


def _evaluate(y: Tensor, classifier: Tensor, labels: Tensor, groups: Tensor) -> GroupAccuracy:
    return group_accuracy(logits(y, classifier).argmax(-1).cpu(), labels, groups)


def random_heads(candidates: Sequence[Head], n: int, seed: int) -> list[Head]:
    """``n`` distinct heads drawn uniformly from ``candidates`` with a seeded generator."""
    if not 0 <= n <= len(candidates):
        raise ValueError(f"cannot draw {n} heads from {len(candidates)}")
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[:n]
    return sorted(candidates[i] for i in order.tolist())


def spurious_table(
    contributions: HeadContributions,
    labels: Int[Tensor, " n"],
    groups: Int[Tensor, " n"],
    classifier: Float[Tensor, "d_out n_classes"],
    role_heads: Sequence[Head],
    hand_picked: Sequence[Head] | None = None,
    n_random_seeds: int = 5,
    seed: int = 0,
    group_names: Mapping[int, str] | None = None,
    role_label: str = "automatic",
    heads_only: bool = False,
) -> SpuriousTable:
    """Evaluate the baseline, extra-ablations-only, random-heads and role-heads settings (module docstring).

    Random heads come from all kept heads (the layers the role heads are picked from), as many as the role
    heads, and the seed with the best worst-group accuracy is reported (its average alongside).
    ``heads_only`` adds the random-heads and role-heads rows again without the extra ablations (for small
    models whose MLPs carry the class: ``cue_and_class_effects`` shows where each lives).
    """
    if n_random_seeds < 1:
        raise ValueError("n_random_seeds must be at least 1")
    labels, groups = labels.cpu(), groups.cpu()
    if labels.shape[0] != contributions.n_images or groups.shape[0] != contributions.n_images:
        raise ValueError("labels and groups must have one entry per image")
    for key in list(role_heads) + list(hand_picked or []):
        contributions.head_index(key)  # clear error on a head outside the kept layers
    evaluate = lambda y: _evaluate(y, classifier, labels, groups)
    rows = []
    base = evaluate(contributions.embedding)
    rows.append(SpuriousRow("baseline", base.worst_group, base.average, base.per_group))
    extra = evaluate(contributions.compose(ablate_rest=True))
    rows.append(SpuriousRow("extra ablations only", extra.worst_group, extra.average, extra.per_group,
                            note="MLPs + earlier attention layers mean-ablated"))
    candidates = contributions.head_keys()
    heads_sets = [(f"role heads ({role_label})", sorted(role_heads))]
    if hand_picked:
        heads_sets.append(("role heads (hand-picked)", sorted(hand_picked)))
    for ablate_rest in (True, False) if heads_only else (True,):
        suffix, note = ("", "+ extra ablations") if ablate_rest else (", heads only", "no extra ablations")
        random_done: set[int] = set()
        for name, heads in heads_sets:
            n = len(heads)
            if n not in random_done and n > 0:
                best, best_heads, best_seed = None, [], seed
                for s in range(seed, seed + n_random_seeds):
                    drawn = random_heads(candidates, n, s)
                    result = evaluate(contributions.compose(mean_ablate_heads=drawn, ablate_rest=ablate_rest))
                    if best is None or result.worst_group > best.worst_group:
                        best, best_heads, best_seed = result, drawn, s
                rows.append(SpuriousRow(f"random heads ({n}, best of {n_random_seeds}){suffix}", best.worst_group,
                                        best.average, best.per_group, best_heads, note=f"{note}; seed {best_seed}"))
                random_done.add(n)
            result = evaluate(contributions.compose(mean_ablate_heads=heads, ablate_rest=ablate_rest))
            rows.append(SpuriousRow(f"{name}{suffix}", result.worst_group, result.average, result.per_group,
                                    list(heads), note=note))
    return SpuriousTable(rows, dict(group_names or {}), list(contributions.layers), contributions.n_images,
                         sorted(role_heads), picker=role_label)


def pick_role_heads(
    contributions: HeadContributions,
    query_embeddings: Float[Tensor, "n_queries d_out"],
    picker: str = "textspan",
    textspan_rows: Mapping[Head, TextSpanResult] | None = None,
    pool_embeddings: Float[Tensor, "n_texts d_out"] | None = None,
) -> list[tuple[Head, float]]:
    """Rank heads by a topic: "textspan" scores each head's TextSpan texts against the queries
    (``heads_by_textspan_topic``, needs rows and the pool's embeddings); "variance" ranks heads by the
    share of their variance along the queries (``heads_for_queries``, the queries centred by the pool's
    mean when it is given). Returns the full ranking, best first."""
    if picker == "textspan":
        if textspan_rows is None or pool_embeddings is None:
            raise ValueError("picker='textspan' needs textspan_rows and pool_embeddings")
        return heads_by_textspan_topic(textspan_rows, query_embeddings, pool_embeddings)
    if picker == "variance":
        return heads_for_queries(contributions, query_embeddings, centre_with=pool_embeddings)
    raise ValueError("picker must be 'textspan' or 'variance'")


def _tuple_or_none(value: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


@dataclass(frozen=True)
class SpuriousConfig:
    """The settings of ``run_spurious`` (its data — the dataset, pool embeddings, TextSpan rows — are arguments).

    ``seed`` starts the random-head seeds. ``classnames`` / ``templates``: the zero-shot classes (required: the
    caller's task; the shapes world's birds come with its adapters in ``vit_lens_clip.datasets``). ``group_names``
    name the groups in tables. Heads: the last ``last_n_layers`` layers are kept, collected ``batch_size`` images
    at a time (``normalize``: unit-norm embeddings). TextSpan: ``k`` texts per head at ``rank`` from ``pool`` (a
    shipped pool's name or the texts). Role heads: ``n_heads`` (default ``default_role_head_count``) picked by
    ``queries`` (default ``PLACE_QUERIES``) with ``picker`` ("textspan" or "variance"); ``hand_picked`` heads add
    a row. Random heads: best of ``n_random_seeds``. ``heads_only`` adds the head rows without the extra
    ablations. ``cache_dir`` caches text embeddings; ``out_dir`` keeps the collected contributions on disk
    (resumable). Sequences are stored as tuples.
    """

    seed: int = 0
    classnames: Sequence[str] | None = None
    templates: Sequence[Any] | None = None
    group_names: Mapping[int, str] | None = None
    last_n_layers: int = 4
    batch_size: int = 32
    normalize: bool = True
    pool: str | Path | Sequence[str] = "descriptions"
    k: int = 10
    rank: int = 80
    queries: Sequence[str] | None = None
    picker: str = "textspan"
    n_heads: int | None = None
    hand_picked: Sequence[Head] | None = None
    n_random_seeds: int = 5
    heads_only: bool = True
    cache_dir: str | Path | None = None
    out_dir: str | Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("classnames", "templates", "queries", "hand_picked"):
            object.__setattr__(self, name, _tuple_or_none(getattr(self, name)))
        if not isinstance(self.pool, (str, Path)):
            object.__setattr__(self, "pool", tuple(self.pool))
        if self.group_names is not None:
            object.__setattr__(self, "group_names", dict(self.group_names))
        if self.picker not in ("textspan", "variance"):
            raise ValueError(f"picker must be 'textspan' or 'variance', got {self.picker!r}")
        for name in ("last_n_layers", "batch_size", "k", "rank", "n_random_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_heads is not None and self.n_heads < 0:
            raise ValueError(f"n_heads must be non-negative, got {self.n_heads}")


SPURIOUS_SETTINGS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(SpuriousConfig))


def run_spurious(
    loaded,
    dataset: Dataset | None = None,
    config: SpuriousConfig | None = None,
    *,
    pool_embeddings: Float[Tensor, "n_texts d_out"] | None = None,
    textspan_rows: Mapping[Head, TextSpanResult] | None = None,
    contributions: HeadContributions | None = None,
    groups: Int[Tensor, " n"] | None = None,
    **settings: Any,
) -> SpuriousTable:
    """The whole experiment on any model and a balanced evaluation set with group labels.

    ``dataset`` items hold a preprocessed ``image``, a class ``label`` and a ``group``. ``config`` holds the
    settings (``SpuriousConfig``); keyword ``settings`` (its field names, e.g. ``k=5``) override it, so
    ``run_spurious(loaded, dataset, k=5)`` equals ``run_spurious(loaded, dataset, SpuriousConfig(k=5))``.
    TextSpan runs on the kept heads over this set with the text pool unless ``textspan_rows`` are given (e.g.
    computed on a general image set); ``pool_embeddings`` are the pool's text embeddings (computed and cached
    when None).

    Every ablation is post-hoc (mean-ablation on the stored head contributions), so the images are needed only
    to compute those: pass ``contributions`` (e.g. ``StoredParts(folder).contributions()`` of a ``collect`` folder, whose
    ``labels`` are the class labels) together with ``groups`` (the group of each row, in the folder's row order)
    in place of ``dataset``; the model is then used for texts only.
    """
    unknown = sorted(set(settings) - SPURIOUS_SETTINGS)
    if unknown:
        raise TypeError(f"run_spurious got unknown settings {unknown}; the settings are SpuriousConfig's fields: "
                        f"{sorted(SPURIOUS_SETTINGS)}")
    config = dataclasses.replace(config or SpuriousConfig(), **settings)
    classnames, templates = config.classnames, config.templates
    if classnames is None or templates is None:
        raise BadInputError("run_spurious needs the zero-shot classnames and templates (SpuriousConfig fields)")
    queries = PLACE_QUERIES if config.queries is None else config.queries
    group_names = config.group_names
    if (contributions is None) != (groups is None):
        raise BadInputError("pass contributions and groups together (the group of each contribution row)")
    if contributions is not None and dataset is not None:
        raise BadInputError("pass either a dataset or precomputed contributions (with groups), not both")
    if dataset is None and contributions is None:
        raise BadInputError("run_spurious needs a dataset, or contributions with groups")
    classifier = build_classifier(loaded, list(classnames), list(templates))
    if contributions is None:
        items = LabelGroupItems(dataset, len(classnames))
        contributions = collect_head_contributions(loaded, items, config.last_n_layers, config.batch_size,
                                                   config.normalize, config.out_dir, config.progress)
        labels, groups = items.unpack(contributions.labels)
        contributions = dataclasses.replace(contributions, labels=labels)
    else:
        if contributions.normalized != config.normalize:  # the ablated means would be of the other scale
            raise BadInputError(f"the contributions were collected with normalize={contributions.normalized}; pass "
                                 f"normalize={contributions.normalized} (the setting applies to the images' parts)")
        labels, groups = _stored_labels_and_groups(contributions, groups, len(classnames))

    texts = load_pool(config.pool) if isinstance(config.pool, (str, Path)) else list(config.pool)
    if pool_embeddings is None:
        pool_embeddings = embed_texts_cached(texts, loaded.encode_text, loaded.key, config.cache_dir)
    elif pool_embeddings.shape[0] != len(texts):
        raise ValueError(f"pool_embeddings has {pool_embeddings.shape[0]} rows for a pool of {len(texts)} texts")
    table = None
    if textspan_rows is None and config.picker == "textspan":
        table = TextSpanTable.compute(contributions, pool_embeddings, texts, k=config.k, rank=config.rank)
        textspan_rows = table.rows
    elif textspan_rows is not None:
        table = TextSpanTable(dict(textspan_rows), texts)
    query_embeddings = loaded.encode_text(list(queries)).float().cpu()
    count = default_role_head_count(len(contributions.head_keys())) if config.n_heads is None else config.n_heads
    ranking = pick_role_heads(contributions, query_embeddings, config.picker, textspan_rows, pool_embeddings)
    role = [key for key, _ in ranking[:count]]
    hand_picked = list(config.hand_picked or [])
    result = spurious_table(contributions, labels, groups, classifier, role, hand_picked, config.n_random_seeds,
                            config.seed, group_names, role_label=f"automatic, {config.picker}",
                            heads_only=config.heads_only)
    result.head_scores = ranking
    result.classifier = classifier
    if table is not None:
        result.role_head_texts = {key: table.texts(key) for key in sorted(set(role) | set(hand_picked))}
    return result


def _stored_labels_and_groups(contributions: HeadContributions, groups: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """Class labels and groups of precomputed contributions, checked (one-line errors)."""
    labels = contributions.labels
    if labels is None:
        raise BadInputError("the contributions hold no class labels (collect a labelled dataset)")
    groups = torch.as_tensor(groups)
    if groups.shape != labels.shape or groups.is_floating_point():
        raise BadInputError(f"groups must be {contributions.n_images} integers, one per contribution row; "
                            f"got {tuple(groups.shape)} {groups.dtype}")
    if bool((labels < 0).any() | (labels >= n_classes).any()) or bool((groups < 0).any()):
        raise BadInputError(f"labels must lie in 0..{n_classes - 1} (the classnames) and groups be non-negative")
    return labels.long(), groups.long()


# ------------------------------------------------------------------------------------------- attribution


@dataclass
class ComponentEffect:
    """One part's share of the margin shifts: ``cue`` when the spurious cue flips, ``label`` when the class does."""

    component: str
    cue: float
    label: float


def cue_and_class_effects(
    parts: Decomposition,
    classifier: Float[Tensor, "d_out 2"],
    labels: Int[Tensor, " n"],
    cues: Int[Tensor, " n"],
) -> list[ComponentEffect]:
    """Where a two-class decision's spurious cue and its class live, part by part.

    Each part c of a (normalised) decomposition adds m_c(x) = c(x)·(w₁ − w₀) to the zero-shot margin. With
    means over the four (label, cue) cells, its cue effect is ½ Σ_y [m̄_c(y, 1) − m̄_c(y, 0)] and its label
    effect ½ Σ_k [m̄_c(1, k) − m̄_c(0, k)]. Both are linear in the parts, so embed + attention layers + MLPs
    add up to the whole embedding's effects, and each layer's heads to that layer's. Rows: embed, then per
    layer ``L{l}.attn``, ``L{l}.H{h}`` (kept layers), ``L{l}.mlp``; last ``total``.
    """
    labels, cues = labels.cpu(), cues.cpu()
    for name, v in (("labels", labels), ("cues", cues)):
        if set(v.unique().tolist()) != {0, 1}:
            raise ValueError(f"{name} must take both values 0 and 1")
    cells = {(y, k): (labels == y) & (cues == k) for y in (0, 1) for k in (0, 1)}
    if any(mask.sum() == 0 for mask in cells.values()):
        raise ValueError("every (label, cue) cell needs at least one image")
    direction = (classifier[:, 1] - classifier[:, 0]).float().cpu()

    def effects(c: Tensor) -> tuple[float, float]:
        m = c.float().cpu() @ direction
        cell = lambda y, k: m[cells[y, k]].mean()
        cue = 0.5 * ((cell(0, 1) - cell(0, 0)) + (cell(1, 1) - cell(1, 0)))
        label = 0.5 * ((cell(1, 0) - cell(0, 0)) + (cell(1, 1) - cell(0, 1)))
        return float(cue), float(label)

    rows = [ComponentEffect("embed", *effects(parts.embed))]
    kept = {layer: i for i, layer in enumerate(parts.layers)}
    for layer in range(parts.attns.shape[1]):
        rows.append(ComponentEffect(f"L{layer}.attn", *effects(parts.attns[:, layer])))
        if layer in kept:
            for h in range(parts.heads.shape[2]):
                rows.append(ComponentEffect(f"L{layer}.H{h}", *effects(parts.heads[:, kept[layer], h])))
        rows.append(ComponentEffect(f"L{layer}.mlp", *effects(parts.mlps[:, layer])))
    rows.append(ComponentEffect("total", *effects(parts.embedding)))
    return rows


def effects_markdown(rows: Sequence[ComponentEffect], top: int | None = None) -> str:
    """A Markdown table of ``cue_and_class_effects`` rows (optionally only the ``top`` parts by |cue|, plus total)."""
    body = [r for r in rows if r.component != "total"]
    if top is not None:  # rank the finest parts: a kept layer's heads stand in for its attention row
        kept = {r.component.split(".")[0] for r in body if ".H" in r.component}
        body = [r for r in body if not (r.component.endswith(".attn") and r.component.split(".")[0] in kept)]
        body = sorted(body, key=lambda r: -abs(r.cue))[:top]
    lines = ["| part | cue effect | class effect |", "|---|---|---|"]
    lines += [f"| {r.component} | {r.cue:+.3f} | {r.label:+.3f} |" for r in body + [r for r in rows if r.component == "total"]]
    return "\n".join(lines)


def dataset_cue_and_class_effects(
    loaded,
    dataset: Dataset,
    classifier: Float[Tensor, "d_out 2"],
    batch_size: int = 64,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> list[ComponentEffect]:
    """``cue_and_class_effects`` over a dataset whose items hold ``image``, ``label`` and ``group`` with
    group = 2·label + cue (the shapes world's and the Waterbirds convention); parts folded and normalised."""
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    items = LabelGroupItems(dataset, 2)
    stack = StackReducer()
    run_reducers(loaded.model, items, [stack], batch_size=batch_size, layers=layers, normalize=True,
                 progress=progress)
    rows = stack.result()
    labels, groups = items.unpack(rows["labels"])
    if not torch.equal(groups // 2, labels):
        raise ValueError("groups must be 2 * label + cue")
    parts = Decomposition(embed=rows["embed"], attns=rows["attns"], mlps=rows["mlps"], heads=rows["heads"],
                          layers=stack.layers, embedding=rows["embedding"], convention="equal_share", normalized=True)
    return cue_and_class_effects(parts, classifier, labels, groups % 2)

