"""``vit-lens-clip explore DIR --out SITE``: a static, offline site to see every unit of a collection folder.

From the folder's stored parts (``collect --parts heads,embed,means``) it computes, per kept head:

- its share of the embedding: mean over images of ĉ_{l,h,i} · y_i / ‖y_i‖² (the shares of all parts sum to 1);
- TextSpan (k small) on the stored contributions with a shipped pool of descriptions;
- its top dataset examples along its first principal direction (``methods.examples.TopExamples``);
- its direct effect: the mean of ĉ_{l,h} over images.

From the folder's dataset examples (``collect --examples K --example-units ...``, ``examples.safetensors``) it
adds a page per neuron, per SAE feature and per user-defined unit, with the examples kept during the collection
and the unit's direct effect on the embedding:

- a neuron n of layer l: its second-order effect φ_n(I) (``methods.neurons.effects``), averaged over its own
  top images; the later heads that carry it (mean |s_{j,h,n}|·‖U_{j,h,n}‖ over those images) are its links;
- an SAE feature j: (γ ⊙ (d_j − mean d_j)) · P, its direct effect per unit of pooled activation
  (``methods.sae.explain.direct_effect_directions``);
- a hook unit on the residual stream along d: (γ ⊙ (d − mean d)) · P likewise (other hooks: none).

The maps of every kept example (a head's ``joint_map`` of its direction; a neuron's, feature's or hook unit's
activation at each patch) are computed in one pass over just the kept images, re-read from the dataset the
collection recorded (a ``shapes:`` world is re-rendered from its seed). The pool texts nearest each direct
effect describe the neurons and features; the site's search ranks units by the cosine of a query with their
direct effect (``viz.explorer.rank_units``). Pages are written by ``viz.explorer`` (through the one HTML writer).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vit_lens_clip.app.collect import example_units, textspan_from_collection
from vit_lens_clip.datasets.sources import open_dataset
from vit_lens_clip.decompose.store import EXAMPLES, StoredParts
from vit_lens_clip.distributed.collection import read_collection_info
from vit_lens_clip.errors import BadInputError
from vit_lens_clip.loading import LoadedCLIP, load_clip
from vit_lens_clip.methods.examples import HeadUnit, HookFeatures, HookUnit, TopExamples, Unit, principal_directions
from vit_lens_clip.methods.neurons.effects import NeuronEffects, collect_layers
from vit_lens_clip.methods.sae.explain import direct_effect_directions
from vit_lens_clip.methods.sae.sae import SparseAutoencoder
from vit_lens_clip.methods.spatial.heatmaps import joint_map
from vit_lens_clip.methods.textspan.pools import embed_texts_cached, load_pool
from vit_lens_clip.viz.explorer import SiteData, UnitView, image_png, map_png, write_site

__all__ = ["ExploreContext", "build_explore_command", "build_site_data", "reopen_dataset", "residual_direct_effect"]

NEURON_HOOK = re.compile(r"blocks\.(\d+)\.mlp\.")


def reopen_dataset(fingerprint: str, preprocess: Callable) -> Optional[Dataset]:
    """The dataset a collection recorded, when it can be opened again: ``shapes:n=N,seed=S`` is re-rendered,
    ``folder:``/``labelled:`` folders are re-read; anything else gives None (the site then has no images)."""
    found = re.fullmatch(r"shapes:n=(\d+),seed=(-?\d+)", fingerprint)
    if found:
        return open_dataset(f"shapes:{found.group(1)}", preprocess, int(found.group(2)))[0]
    found = re.fullmatch(r"(folder|labelled):(.*):n=\d+:[0-9a-f]+", fingerprint)
    if found and Path(found.group(2)).is_dir():
        return open_dataset(f"{found.group(1)}:{found.group(2)}", preprocess)[0]
    return None


def _display(preprocess: Callable, image: torch.Tensor) -> torch.Tensor:
    """The model input as a displayable [3, H, W] image in [0, 1] (the preprocess's Normalize undone)."""
    for t in getattr(preprocess, "transforms", []):
        if hasattr(t, "mean") and hasattr(t, "std"):
            mean, std = torch.tensor(t.mean).view(-1, 1, 1), torch.tensor(t.std).view(-1, 1, 1)
            return (image * std + mean).clamp(0, 1)
    return (image - image.min()) / (image.max() - image.min()).clamp_min(1e-8)


@torch.no_grad()
def residual_direct_effect(model, directions: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_out"]:
    """(γ ⊙ (d − mean d)) · P: what a write d to the last residual adds to the embedding, per unit, the final
    LayerNorm's σ set to 1 (its scale varies per image; the direction does not)."""
    d = directions.double()
    return ((d - d.mean(-1, keepdim=True)) * model.ln_final.w.double()) @ model.W_proj.double()


class _Images(dict):
    """Dataset images by index, each read (or rendered) once however many units keep it."""

    def __init__(self, dataset: Dataset):
        super().__init__()
        self.dataset = dataset

    def __missing__(self, index: int) -> Tensor:
        self[index] = image = self.dataset[index]["image"]
        return image

    def stack(self, indices: Sequence[int], like: Tensor) -> Tensor:
        return torch.stack([self[j] for j in indices]).to(like.device, like.dtype)


@dataclass
class _Group:
    """One unit (or feature group) of the collected examples: its rows in ``examples.safetensors``."""

    unit: Unit
    rows: list[int]
    kind: str


def _kind(unit: Unit) -> str:
    if isinstance(unit, HookFeatures):
        if isinstance(unit.source, SparseAutoencoder):
            return "feature"
        if NEURON_HOOK.match(unit.hook) and all(re.fullmatch(r"L\d+N\d+", n) for n in unit.names):
            return "neuron"
    return "unit"


def _token_features(unit: Unit, t: Tensor) -> Tensor:
    """A hook's output [B, T, W] as the unit's features at every token [B, T, m]."""
    if isinstance(unit, HookFeatures):
        return unit.activations(t).float()
    return (t.double() @ unit.direction.to(t.device).double())[..., None].float()


@dataclass
class ExploreContext:
    """What a live explorer (``--serve``) needs besides the site: the model, the units by name and the data."""

    loaded: LoadedCLIP
    data: Optional[SiteData]
    head_directions: dict[str, Tensor] = field(default_factory=dict)
    hook_units: dict[str, tuple[Unit, int]] = field(default_factory=dict)

    def unit_map(self, name: str, image: Float[Tensor, "3 h w"]) -> Tensor:
        """The unit's map on one preprocessed image: a head's ``joint_map`` of its direction, or the activation
        of a neuron, feature or hook unit at every patch [grid_h, grid_w]."""
        model = self.loaded.model
        x = image[None].to(model.W_proj.device, model.W_proj.dtype)
        if name in self.head_directions:
            layer, head = (int(v) for v in re.fullmatch(r"L(\d+)H(\d+)", name).groups())
            return joint_map(model, x, layer, head, self.head_directions[name].to(x))[0].float().cpu()
        if name not in self.hook_units:
            raise BadInputError(f"no unit {name!r} in this site")
        unit, column = self.hook_units[name]
        with torch.no_grad():
            _, cache = model.run_with_cache(x, names_filter=lambda n: n == unit.hook)
            feats = _token_features(unit, cache[unit.hook])[0, 1:, column]
        gh, gw = (s // p for s, p in zip(model.cfg.image_size, model.cfg.patch_size))
        return feats.reshape(gh, gw).float().cpu()


def _collected(stored: StoredParts, loaded: LoadedCLIP, identity: dict, units: Optional[Sequence[Unit]],
               layers: Sequence[int]) -> tuple[list[_Group], dict]:
    """The collected examples (names, scores, indices) and the unit groups they belong to (heads left out: the
    head pages use their principal directions)."""
    ex = stored.examples()
    if units is None:
        spec = identity.get("example_units")
        if not spec:
            raise BadInputError(f"{stored.folder} records no --example-units; pass units= to build_site_data")
        units = example_units(loaded.model, spec, identity.get("layers") or layers)
    row = {n: i for i, n in enumerate(ex["names"])}
    probe = TopExamples(units, k=1)
    if probe.names != ex["names"]:
        raise BadInputError(f"the units do not match {stored.folder / EXAMPLES} ({len(probe.names)} names, "
                            f"the file has {len(ex['names'])})")
    groups = []
    for unit, columns in zip(probe.units, probe._columns):
        if isinstance(unit, HeadUnit):
            continue
        groups.append(_Group(unit, [row[n] for n in probe.names[columns]], _kind(unit)))
    return groups, ex


@torch.no_grad()
def _maps_in_one_pass(loaded: LoadedCLIP, dataset: _Images, groups: list[_Group], indices: Tensor,
                      batch: int = 64, progress: bool = False) -> Tensor:
    """Maps [rows, k, grid_h, grid_w] of every collected example (rows of ``indices`` [rows, k], dataset
    indices): one forward per batch of the kept images only, caching just the groups' hooks."""
    model = loaded.model
    gh, gw = (s // p for s, p in zip(model.cfg.image_size, model.cfg.patch_size))
    maps = torch.zeros(*indices.shape, gh, gw)
    wanted = sorted(set(indices.flatten().tolist()))
    hooks = {g.unit.hook for g in groups}
    for start in tqdm(range(0, len(wanted), batch), desc="maps of the kept images", disable=not progress):
        chunk = wanted[start:start + batch]
        images = dataset.stack(chunk, model.W_proj)
        _, cache = model.run_with_cache(images, names_filter=lambda n: n in hooks)
        position = torch.full((int(indices.max()) + 1,), -1, dtype=torch.long)
        position[torch.tensor(chunk)] = torch.arange(len(chunk))
        for g in groups:
            feats = _token_features(g.unit, cache[g.unit.hook])[:, 1:].cpu()  # [B, patches, m]
            rows = torch.tensor(g.rows)
            where = position[indices[rows]]  # [m, k]
            us, ks = (where >= 0).nonzero(as_tuple=True)
            maps[rows[us], ks] = feats[where[us, ks], :, us].reshape(-1, gh, gw)
    return maps


def _neuron_effects(loaded: LoadedCLIP, dataset: _Images, groups: list[_Group], indices: Tensor,
                    layers: Sequence[int], n_heads: int) -> dict[int, tuple[Tensor, list[list[tuple[str, str]]]]]:
    """Per neuron group (by its position in ``groups``): each neuron's second-order effect averaged over its own
    top images [m, D], and the later heads that carry it (mean |s_{j,h,n}|·‖U_{j,h,n}‖ over those images, the
    three largest); one pass (``collect_layers``) over the union of those images for every layer at once."""
    model = loaded.model
    if not groups:
        return {}
    layer_of = [int(NEURON_HOOK.match(g.unit.hook).group(1)) for g in groups]
    wanted = sorted(set(indices[torch.tensor([r for g in groups for r in g.rows])].flatten().tolist()))
    all_stats = collect_layers(model, dataset.stack(wanted, model.W_proj), sorted(set(layer_of)))
    position = {j: i for i, j in enumerate(wanted)}
    out = {}
    for g_index, (group, layer) in enumerate(zip(groups, layer_of)):
        stats = all_stats[layer]
        effects = NeuronEffects(model, stats)
        kept = indices[torch.tensor(group.rows)]  # [m, k]
        rows = torch.tensor([[position[j] for j in r] for r in kept.tolist()]).T  # [k, m]
        neurons = torch.tensor([int(n.split("N")[1]) for n in group.unit.names])
        phi = effects.effects_at(rows, neurons).mean(0)  # [m, D]
        s = stats.s[rows[..., None, None], torch.arange(stats.s.shape[1])[:, None], torch.arange(stats.s.shape[2]),
                    neurons[:, None, None]].abs().mean(0)  # [m, J, H]
        weight = s * effects.U[:, :, neurons].norm(dim=-1).permute(2, 0, 1)  # [m, J, H]
        top = torch.topk(weight.flatten(1), k=min(3, weight[0].numel()))
        related = []
        for values, flats in zip(top.values.tolist(), top.indices.tolist()):
            links = []
            for v, flat in zip(values, flats):
                j, h = divmod(flat, weight.shape[2])
                if stats.later[j] in layers and h < n_heads:
                    links.append((f"L{stats.later[j]}H{h}", f"carries it (mean |s|·‖U‖ {v:.3g})"))
            related.append(links)
        out[g_index] = (phi.float(), related)
    return out


def build_site_data(source: str | Path, loaded: Optional[LoadedCLIP] = None, examples: int = 8,
                    textspan_k: int = 3, pool_name: str = "descriptions", device: str = "cpu",
                    cache_dir: Optional[str] = None, progress: bool = False,
                    max_search_images: int = 1024, queries: Sequence[str] = (), bottom: bool = False,
                    units: Optional[Sequence[Unit]] = None, context: Optional[list] = None) -> SiteData:
    """Everything the site shows, computed from a collection folder (module docstring). ``queries``: texts
    the search knows besides the pool (embedded now, since the page has no text tower). ``units``: the units of
    the folder's ``examples.safetensors`` when they are not the ones ``--example-units`` recorded (user-defined
    hook units). ``context``: a list that receives the ``ExploreContext`` (for the live mode)."""
    meta = read_collection_info(source)
    identity = meta["identity"]
    if loaded is None:
        model_name, pretrained, precision = identity["load"]
        loaded = load_clip(model_name, pretrained, device=device, precision=precision)
    model = loaded.model
    stored = StoredParts(source)
    stored.require(("heads", "embed", "means"), "explore")
    contributions = stored.contributions()
    heads = contributions.heads.float()  # [n, L_kept, H, D]
    n, n_kept, n_heads, _ = heads.shape
    layers = contributions.layers
    y = contributions.embedding.float()
    shares = torch.einsum("nlhd,nd->lh", heads, y / y.pow(2).sum(-1, keepdim=True)) / n

    pool = load_pool(pool_name)
    pool_emb = embed_texts_cached(pool, loaded.encode_text, loaded.key, cache_dir=cache_dir, progress=progress).float()
    extra = [q for q in dict.fromkeys(t.strip() for t in queries) if q and q not in pool]
    if extra:
        pool, pool_emb = pool + extra, torch.cat([pool_emb, loaded.encode_text(extra).float().cpu()])
    table = textspan_from_collection(source, pool_emb[:len(pool) - len(extra)], pool[:len(pool) - len(extra)],
                                     k=textspan_k) if textspan_k > 0 else None
    pool_unit = F.normalize(pool_emb, dim=-1)

    directions = principal_directions(heads)
    head_units = [HeadUnit(layers[i], h, directions[i, h]) for i in range(n_kept) for h in range(n_heads)]
    reducer = TopExamples(head_units, k=examples, bottom=bottom)
    for start in range(0, n, 1024):  # streamed over the stored rows, as a collection would feed it
        reducer.add(reducer.head_scores(heads[start:start + 1024], layers), contributions.indices[start:start + 1024])
    kept = reducer.result()
    reopened = reopen_dataset(str(identity.get("dataset", "")), loaded.preprocess)
    dataset = _Images(reopened) if reopened is not None else None

    def nearest(effect: Optional[Tensor], k: int = 5) -> list[tuple[str, float]]:
        if effect is None or not float(effect.norm()):
            return []
        top = torch.topk(pool_unit @ F.normalize(effect.float(), dim=0), k=min(k, len(pool)))
        return [(pool[t], float(c)) for c, t in zip(top.values.tolist(), top.indices.tolist())]

    head_effects = heads.mean(0)  # [L_kept, H, D]
    views: list[UnitView] = []
    effects: list[Optional[Tensor]] = []
    for u, unit in enumerate(head_units):
        i, h = layers.index(unit.layer), unit.head
        top = list(zip(kept["top_indices"][u].tolist(), kept["top_scores"][u].tolist()))
        low = list(zip(kept["bottom_indices"][u].tolist(), kept["bottom_scores"][u].tolist())) if bottom else []
        maps: list[Optional[Tensor]] = [None] * (len(top) + len(low))
        if dataset is not None and top + low:
            images = dataset.stack([j for j, _ in top + low], model.W_proj)
            maps = list(joint_map(model, images, unit.layer, h, unit.direction.to(images)).float().cpu())
        row = table.rows.get((unit.layer, h)) if table is not None else None
        descriptions = []
        if row is not None and row.texts is not None:
            descriptions = [(str(t), float(v)) for t, v in zip(row.texts, row.variance_explained.tolist())]
        effect = head_effects[i, h]
        views.append(UnitView(
            name=unit.name, kind="head", share=float(shares[i, h]), descriptions=descriptions,
            description_label="TextSpan (variance explained)", nearest=nearest(effect), examples=top,
            maps=[map_png(m) if m is not None else None for m in maps[:len(top)]], bottom=low,
            bottom_maps=[map_png(m) if m is not None else None for m in maps[len(top):]],
            effect_norm=float(effect.norm()),
            summary=f"Layer {unit.layer}, head {h}: share of the embedding {100 * float(shares[i, h]):.2f}% "
                    f"(mean of ĉ·y/‖y‖² over {n} images). Examples: score along its first principal direction."))
        effects.append(effect)

    ctx = ExploreContext(loaded, None, {v.name: hu.direction for v, hu in zip(views, head_units)})
    if (Path(source) / EXAMPLES).is_file():
        groups, ex = _collected(stored, loaded, identity, units, layers)
        indices, scores = ex["top_indices"][:, :examples], ex["top_scores"][:, :examples]
        maps = _maps_in_one_pass(loaded, dataset, groups, indices, progress=progress) if dataset is not None else None
        neuron_groups = [g for g in groups if g.kind == "neuron"] if dataset is not None else []
        neurons = _neuron_effects(loaded, dataset, neuron_groups, indices, layers, n_heads)
        for g in groups:
            related: list[list[tuple[str, str]]] = [[] for _ in g.rows]
            if g.kind == "neuron" and dataset is not None:
                group_effects, related = neurons[neuron_groups.index(g)]
            elif g.kind == "feature":
                group_effects = direct_effect_directions(model, g.unit.source).float().cpu()
            elif isinstance(g.unit, HookUnit) and g.unit.hook.endswith("resid_post") and \
                    g.unit.direction.shape[-1] == model.cfg.d_model:
                group_effects = residual_direct_effect(model, g.unit.direction[None]).float().cpu()
            else:
                group_effects = [None] * len(g.rows)
            names = list(g.unit.names) if isinstance(g.unit, HookFeatures) else [g.unit.name]
            for c, (r, name) in enumerate(zip(g.rows, names)):
                ctx.hook_units[name] = (g.unit, c)
                effect = group_effects[c]
                what = {"neuron": "its largest activation over tokens; direct effect: its second-order effect "
                                  "averaged over these images",
                        "feature": f"its largest activation over tokens ({g.unit.hook}); direct effect: its "
                                   "decoder direction through the final LayerNorm and projection",
                        "unit": f"{g.unit.hook} along the unit's direction"}[g.kind]
                pairs = list(zip(indices[r].tolist(), scores[r].tolist()))
                pngs = [map_png(m) for m in maps[r]] if maps is not None else [None] * len(pairs)
                if g.kind == "feature":  # a feature that does not fire (activation 0) has no example there
                    live = [c for c, (_, v) in enumerate(pairs) if v > 0]
                    pairs, pngs = [pairs[c] for c in live], [pngs[c] for c in live]
                    what += "" if pairs else " It never fires on these images"
                views.append(UnitView(
                    name=name, kind=g.kind, descriptions=nearest(effect),
                    description_label="nearest texts of its direct effect (cosine)", nearest=nearest(effect),
                    examples=pairs, maps=pngs,
                    effect_norm=None if effect is None else float(effect.norm()), related=related[c],
                    summary=f"{g.kind.capitalize()} {name}. Examples: {what}."))
                effects.append(effect)
    _link_heads_to_neurons(views)

    searchable = [u for u, e in enumerate(effects) if e is not None and float(e.norm()) > 0 and views[u].examples]
    effect_rows = F.normalize(torch.stack([effects[u].float() for u in searchable]), dim=-1) if searchable else \
        torch.zeros(0, pool_emb.shape[1])
    small = n <= max_search_images
    shown = {j for v in views for j, _ in v.examples + v.bottom}
    if small:
        shown |= set(contributions.indices.tolist())
    pictures = {}
    if dataset is not None:
        pictures = {j: image_png(_display(loaded.preprocess, dataset[j].float())) for j in sorted(shown)}
    data = SiteData(
        title=f"{identity.get('model', loaded.key)} on {identity.get('dataset', '?')}",
        n_images=n, layers=layers, n_heads=n_heads, units=views, pool=pool, pool_embeddings=pool_unit,
        effects=effect_rows, searchable=searchable,
        contributions=heads.reshape(n, n_kept * n_heads, -1) if small else None,
        indices=contributions.indices.tolist(), pictures=pictures,
    )
    ctx.data = data
    if context is not None:
        context.append(ctx)
    return data


def _link_heads_to_neurons(views: list[UnitView]) -> None:
    """A head's page links the neurons that reach the embedding through it (the inverse of the neurons' links)."""
    by_name = {v.name: v for v in views}
    for v in views:
        if v.kind != "neuron":
            continue
        for head, note in v.related:
            if head in by_name and len(by_name[head].related) < 12:
                by_name[head].related.append((v.name, "a neuron it carries: " + note.split("(", 1)[-1].rstrip(")")))


def _queries(spec: Optional[str]) -> list[str]:
    """``--queries``: a file of texts (one a line), or texts separated by ';'."""
    if not spec:
        return []
    path = Path(spec)
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else spec.split(";")
    return [t.strip() for t in lines if t.strip()]


def build_explore_command(args: argparse.Namespace) -> tuple[Path, ExploreContext]:
    """The ``explore`` command's static site; returns its folder and the live mode's context."""
    torch.manual_seed(0)
    start = time.perf_counter()
    context: list[ExploreContext] = []
    data = build_site_data(args.source, examples=args.examples, textspan_k=args.textspan_k, pool_name=args.pool,
                           device=args.device, cache_dir=args.cache_dir, progress=not args.quiet,
                           max_search_images=args.search_images, queries=_queries(args.queries),
                           bottom=args.bottom, context=context)
    out = write_site(data, args.out)
    if not args.quiet:
        kinds = {k: sum(v.kind == k for v in data.units) for k in ("head", "neuron", "feature", "unit")}
        print(f"explorer site of {', '.join(f'{c} {k}s' for k, c in kinds.items() if c)} ({data.n_images} images) "
              f"in {out}/index.html ({time.perf_counter() - start:.1f} s)")
    return out, context[0]
