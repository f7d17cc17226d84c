"""TextSpan on a real model and dataset: collect head contributions, run TextSpan, measure completeness,
and find heads by text queries.

The head contributions (``decompose.contributions.HeadContributions``: the kept heads, the embedding term, the
embedding and the means, which split the embedding exactly) come from ``collect_head_contributions`` (on a
model), ``StoredParts(folder).contributions()`` (a ``collect`` folder) or the report's decomposition pass.
With ``normalize=True`` (the default, as in the published code) every part is divided by ‖y_i‖ of its own
image, so the parts sum to y_i/‖y_i‖ and TextSpan sees cosine-like contributions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import plotly.graph_objects as go
import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vit_lens_clip.datasets.folder import TensorImages
from vit_lens_clip.decompose.checkpoint import atomic_save_tensors, claim_run_folder, run_identity
from vit_lens_clip.decompose.contributions import Head, HeadContributions, kept_layers
from vit_lens_clip.decompose.reducers import MeanReducer, StackReducer, run_reducers
from vit_lens_clip.decompose.store import StoredParts
from vit_lens_clip.decompose.store_writer import ShardWriter
from vit_lens_clip.methods.textspan.algorithm import TextSpanResult, text_span
from vit_lens_clip.methods.textspan.ranking import rank_heads_by_text
from vit_lens_clip.methods.textspan.report import to_json, to_markdown, write_reports
from vit_lens_clip.methods.zeroshot import accuracy, logits
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.validation import text_embeddings

TextSpanSource = Union[
    Tensor,  # unit text embeddings [M, D]: text_span is run for each k
    Callable[[Tensor, int], TextSpanResult],  # (contributions [*heads, n, D], k) -> result
    Mapping[int, Mapping[Head, TextSpanResult]],  # k -> run_textspan rows
]


# ------------------------------------------------------------------------------------------ collection


def _model_of(loaded_or_model: Any) -> HookedViT:
    if isinstance(loaded_or_model, HookedViT):
        return loaded_or_model
    model = getattr(loaded_or_model, "model", None)
    if isinstance(model, HookedViT):
        return model
    raise TypeError(f"expected a LoadedCLIP or a HookedViT, got {type(loaded_or_model).__name__}")


def collect_head_contributions(
    loaded_or_model: Any,
    dataset: Dataset | Tensor,
    last_n_layers: int = 4,
    batch_size: int = 32,
    normalize: bool = True,
    out_dir: str | Path | None = None,
    progress: bool = True,
    checkpoint_every: int = 50,
    shard_size: int = 4096,
) -> HeadContributions:
    """Run the model over a dataset and keep the last layers' head contributions and all part means.

    ``dataset`` yields reducer items ({image, index, name[, label]}, see ``datasets.folder``) or is a tensor
    of preprocessed images. ``normalize=True`` divides every part by the norm of its image's embedding (as
    the published code does); the means are of the same normalised parts. With ``out_dir`` the per-image
    parts are streamed to safetensors shards under ``out_dir/heads`` and the run checkpoints to
    ``out_dir/checkpoint``: an interrupted call resumes, a finished one is re-read without recomputing.
    The means are also written to ``out_dir/means.safetensors``.
    """
    model = _model_of(loaded_or_model)
    if isinstance(dataset, Tensor):
        dataset = TensorImages(dataset)
    n_layers = model.cfg.n_layers
    layers = kept_layers(n_layers, last_n_layers)
    means = MeanReducer()
    kwargs = {"batch_size": batch_size, "layers": layers, "normalize": normalize, "progress": progress}
    if out_dir is None:
        stack = StackReducer(fields=("heads", "embed", "embedding"))
        run_reducers(model, dataset, [stack, means], **kwargs)
        rows = stack.result() if stack.rows else {}  # no readable image: the error below names the cause
    else:
        # run.json records model weights, data identity and settings; any mismatch refuses the folder
        out = claim_run_folder(out_dir, run_identity(model, dataset, layers=layers, normalize=normalize,
                                                     batch_size=batch_size, kind="head_contributions"))
        stack = ShardWriter(out / "heads", parts=("heads", "embed"), shard_size=shard_size)
        run_reducers(model, dataset, [stack, means], checkpoint_dir=out / "checkpoint",
                     checkpoint_every=checkpoint_every, **kwargs)
        rows = StoredParts(stack.result()).read()
        atomic_save_tensors(out / "means.safetensors", means.result())
    if "heads" not in rows:
        raise ValueError("no image of the dataset could be read")
    return HeadContributions(
        heads=rows["heads"], layers=layers, embed=rows["embed"], embedding=rows["embedding"],
        labels=rows.get("labels"), indices=rows["indices"], means=means.result(), normalized=normalize,
        n_layers=n_layers,
    )


# ------------------------------------------------------------------------------------------ TextSpan


def run_textspan(
    contributions: HeadContributions,
    text_embeddings: Float[Tensor, "n_texts d_out"],
    texts: Sequence[str] | None = None,
    k: int = 10,
    rank: int = 80,
    dtype: torch.dtype = torch.float64,
) -> dict[Head, TextSpanResult]:
    """TextSpan of every kept head in one batched ``text_span`` call; rows keyed by (layer, head).

    k = 10 is the published default; the paper's figures use k = 20. ``texts`` (the pool, aligned with
    ``text_embeddings``) puts the picked strings in each row.
    """
    result = text_span(contributions.stack(), text_embeddings, k=k, rank=rank, dtype=dtype, texts=texts)
    return {(contributions.layers[i], h): row for (i, h), row in result.rows().items()}


@dataclass
class TextSpanTable:
    """TextSpan rows of a model's heads with the pool they index, ready for the JSON/Markdown/HTML reports."""

    rows: dict[Head, TextSpanResult]
    pool: list[str] | None = None
    title: str = "TextSpan"

    @classmethod
    def compute(
        cls,
        contributions: HeadContributions,
        text_embeddings: Float[Tensor, "n_texts d_out"],
        pool: Sequence[str] | None = None,
        k: int = 10,
        rank: int = 80,
        title: str = "TextSpan",
    ) -> TextSpanTable:
        return cls(run_textspan(contributions, text_embeddings, pool, k, rank), None if pool is None else list(pool), title)

    def texts(self, key: Head) -> list[str]:
        """The picked texts of one head, in pick order."""
        row = self.rows[key]
        if row.texts is not None:
            return list(row.texts)
        if self.pool is None:
            return [f"text #{j}" for j in row.indices.tolist()]
        return [self.pool[j] for j in row.indices.tolist()]

    def to_markdown(self) -> str:
        return to_markdown(self.rows, self.pool, self.title)

    def to_json(self) -> str:
        return to_json(self.rows, self.pool)

    def write(self, out_dir: str | Path, stem: str = "textspan") -> dict[str, Path]:
        """``<stem>.json``, ``.md`` and ``.html`` under out_dir (``textspan.report.write_reports``)."""
        return write_reports(self.rows, out_dir, stem, self.pool, self.title)


# ------------------------------------------------------------------------------------------ completeness


@dataclass
class CompletenessTable:
    """Zero-shot top-1 accuracy when every kept head is replaced by its k-text TextSpan reconstruction.

    rows: [{"k": k, "top1": accuracy}] in the order of ks; baseline: the unablated model;
    early_ablated: MLPs and non-kept attention layers mean-ablated, heads intact (the ceiling as k grows).
    """

    rows: list[dict[str, int | float]]  # {"k": int, "top1": float}
    baseline: float
    early_ablated: float
    layers: list[int]
    rank: int | None = None
    n_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "baseline": self.baseline, "early_ablated": self.early_ablated,
                "layers": self.layers, "rank": self.rank, "n_images": self.n_images}

    def to_markdown(self) -> str:
        layers = ", ".join(map(str, self.layers))
        lines = [
            (f"Completeness of TextSpan (heads of layers {layers} replaced by k-text reconstructions; "
            f"{self.n_images} images)"),
            "",
            "| setting | top-1 |",
            "|---|---|",
            f"| baseline (no ablation) | {self.baseline:.2%} |",
            f"| MLPs + earlier attention mean-ablated | {self.early_ablated:.2%} |",
        ]
        lines += [f"| + heads from k = {row['k']} texts | {row['top1']:.2%} |" for row in self.rows]
        return "\n".join(lines) + "\n"


def _reconstructions_for_k(
    contributions: HeadContributions, source: TextSpanSource, k: int, rank: int
) -> Float[Tensor, "n n_kept n_heads d_out"]:
    if isinstance(source, Tensor):
        stacks = [text_span(contributions.stack()[i], source, k=k, rank=rank).reconstruction
                  for i in range(len(contributions.layers))]  # one kept layer at a time bounds memory
        recon = torch.stack(stacks)
    elif isinstance(source, Mapping):
        if k not in source:
            raise ValueError(f"no TextSpan rows for k = {k} (have {sorted(source)})")
        rows = source[k]
        recon = torch.stack([torch.stack([rows[(layer, h)].reconstruction for h in range(contributions.n_heads)])
                             for layer in contributions.layers])
    elif callable(source):
        recon = source(contributions.stack(), k).reconstruction
    else:
        raise TypeError("textspan must be text embeddings, a callable (contributions, k) -> result, or {k: rows}")
    return rearrange(recon, "l h n d -> n l h d").to(contributions.heads.dtype)


def completeness(
    contributions: HeadContributions,
    textspan: TextSpanSource,
    classifier: Float[Tensor, "d_out n_classes"],
    labels: Int[Tensor, " n"] | None = None,
    ks: Sequence[int] = (5, 10, 20, 40, 60),
    rank: int = 80,
    ablate_embed: bool = False,
    progress: bool = False,
) -> CompletenessTable:
    """The paper's completeness protocol, post-hoc in folded space.

    For each k: y = e + Σ_l mean(mlp_l) + Σ_{l not kept} mean(attn_l) + Σ_{(l,h) kept} R^k_{l,h}, where R^k
    is the head's k-text TextSpan reconstruction (its mean plus the part the k texts explain); then top-1
    zero-shot accuracy. The embedding term e is kept per image (``ablate_embed=True`` mean-ablates it too).
    ``textspan``: unit text embeddings [M, D] (``text_span`` is run per k with ``rank``), a callable
    (contributions [n_kept, H, n, D], k) -> TextSpanResult, or a dict k -> ``run_textspan`` rows.
    ``labels`` defaults to ``contributions.labels``; ``progress`` shows a bar over the kept layers.
    """
    labels = contributions.labels if labels is None else labels
    if labels is None:
        raise ValueError("completeness needs labels (none were collected with the contributions)")
    if not ks:
        raise ValueError("ks must hold at least one k")

    def top1(y: Tensor) -> float:
        return accuracy(logits(y, classifier), labels, topk=(1,))["top1"]

    baseline = top1(contributions.embedding)
    early = top1(contributions.compose(ablate_rest=True, ablate_embed=ablate_embed))
    ks = [int(k) for k in ks]
    if isinstance(textspan, Tensor):  # one run with the largest k serves every k (greedy picks are prefixes)
        stacked = contributions.stack()
        runs = [text_span(stacked[i], textspan, k=max(ks), rank=rank, prefix_ks=ks)
                for i in tqdm(range(len(contributions.layers)), desc="completeness (TextSpan per layer)",
                              disable=not progress)]  # one kept layer at a time bounds memory
        reconstructions = {k: rearrange(torch.stack([r.prefix_reconstructions[k] for r in runs]),
                                        "l h n d -> n l h d").to(contributions.heads.dtype) for k in ks}
    else:
        reconstructions = {k: _reconstructions_for_k(contributions, textspan, k, rank) for k in ks}
    rows = []
    for k in ks:
        y = contributions.compose(reconstructions[k], ablate_rest=True, ablate_embed=ablate_embed)
        rows.append({"k": k, "top1": top1(y)})
    return CompletenessTable(rows, baseline, early, list(contributions.layers),
                             rank if isinstance(textspan, Tensor) else None, contributions.n_images)


def completeness_figure(table: CompletenessTable, title: str | None = None):
    """Plotly figure: accuracy vs k, with the baseline and the early-ablated accuracy as dashed lines."""
    ks = [row["k"] for row in table.rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ks, y=[100 * row["top1"] for row in table.rows], mode="lines+markers",
                             name="heads replaced by TextSpan reconstruction"))
    fig.add_hline(y=100 * table.baseline, line_dash="dash", line_color="black",
                  annotation_text="baseline", annotation_position="bottom right")
    fig.add_hline(y=100 * table.early_ablated, line_dash="dot", line_color="gray",
                  annotation_text="MLPs + early attention mean-ablated", annotation_position="top right")
    fig.update_layout(title=title or "TextSpan completeness", xaxis_title="texts per head (k)",
                      yaxis_title="zero-shot top-1 accuracy (%)", template="plotly_white")
    return fig


# ------------------------------------------------------------------------------------------ head pickers


def _query_embeddings(loaded_or_text_embeddings: Any, queries: Sequence[str], d_out: int) -> Tensor:
    if isinstance(loaded_or_text_embeddings, Tensor):
        return text_embeddings(loaded_or_text_embeddings, d_out).float()
    if hasattr(loaded_or_text_embeddings, "encode_text"):
        return text_embeddings(queries, d_out, loaded_or_text_embeddings.encode_text).float().cpu()
    raise TypeError("pass a LoadedCLIP (with encode_text) or query embeddings [Q, D]")


def _aggregate(values: Tensor, how: str) -> Tensor:
    if how == "mean":
        return values.mean(0)
    if how == "max":
        return values.max(0).values
    raise ValueError("aggregate must be 'mean' or 'max'")


def _ranked(keys: Sequence[Head], scores: Tensor, top: int | None) -> list[tuple[Head, float]]:
    order = sorted(range(len(keys)), key=lambda i: -float(scores[i]))  # stable: ties keep layer-major order
    ranked = [(keys[i], float(scores[i])) for i in order]
    return ranked if top is None else ranked[:top]


def heads_for_queries(
    contributions: HeadContributions,
    loaded_or_text_embeddings: Any,
    queries: Sequence[str] = ("a place", "a location", "a background"),
    top: int | None = None,
    aggregate: str = "mean",
    centre_with: Float[Tensor, "n_texts d_out"] | None = None,
) -> list[tuple[Head, float]]:
    """Heads ranked by the fraction of their centred variance along the query directions.

    Per query q the score of head (l, h) is |C_c q̂|² / |C_c|_F² (``rank_heads_by_text``); scores are
    averaged (or maxed) over queries. ``loaded_or_text_embeddings`` is a LoadedCLIP (the queries are
    embedded with it) or query embeddings [Q, D]. ``centre_with`` (e.g. a text pool's embeddings)
    subtracts that pool's mean embedding from every query first, removing the direction all texts share.
    """
    Q = _query_embeddings(loaded_or_text_embeddings, queries, contributions.heads.shape[-1])
    if centre_with is not None:
        Q = Q - centre_with.float().mean(0).to(Q)
    keys = contributions.head_keys()
    C = rearrange(contributions.heads, "n l h d -> (l h) n d")
    per_query = []
    for q in Q:
        fractions = dict(rank_heads_by_text(C, q, keys))
        per_query.append(torch.tensor([fractions[key] for key in keys], dtype=torch.float64))
    return _ranked(keys, _aggregate(torch.stack(per_query), aggregate), top)


def heads_by_textspan_topic(
    rows: Mapping[Head, TextSpanResult],
    topic_embeddings: Float[Tensor, "n_queries d_out"],
    pool_embeddings: Float[Tensor, "n_texts d_out"],
    top: int | None = None,
    aggregate: str = "mean",
    standardize: bool = True,
) -> list[tuple[Head, float]]:
    """Heads ranked by how much their TextSpan texts are about a topic.

    Each pool text j gets a topic score s_j: its cosine with each topic query, standardised over the pool
    ((cos − mean)/std, so that the common direction of all CLIP texts does not count) when ``standardize``,
    then averaged (or maxed) over queries. A head's score is Σ_i w_i s_{j_i} over its picks j_i, with
    w_i = variance_explained_i / Σ variance_explained (uniform if the head explains nothing).
    """
    if topic_embeddings.ndim != 2 or pool_embeddings.ndim != 2 or topic_embeddings.shape[1] != pool_embeddings.shape[1]:
        raise ValueError("need topic_embeddings [Q, D] and pool_embeddings [M, D] with the same D")
    T = torch.nn.functional.normalize(pool_embeddings.double(), dim=-1)
    Q = torch.nn.functional.normalize(topic_embeddings.double().to(T.device), dim=-1)
    cos = Q @ T.T  # [Q, M]
    if standardize:
        cos = (cos - cos.mean(1, keepdim=True)) / cos.std(1, keepdim=True).clamp_min(1e-12)
    text_scores = _aggregate(cos, aggregate)  # [M]
    keys = list(rows)
    scores = []
    for key in keys:
        row = rows[key]
        weights = row.variance_explained.double().cpu().clamp_min(0)
        weights = weights / weights.sum() if weights.sum() > 0 else torch.full_like(weights, 1 / len(weights))
        scores.append(float((weights * text_scores.cpu()[row.indices.cpu()]).sum()))
    return _ranked(keys, torch.tensor(scores), top)


def default_role_head_count(n_kept_heads: int) -> int:
    """About 15% of the kept heads, at least one (10 of ViT-L's 64 heads in its last 4 layers)."""
    return max(1, math.floor(0.15 * n_kept_heads + 0.5))
