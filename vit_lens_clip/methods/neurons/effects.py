"""Second-order effects of MLP neurons: per-image scalars s and image-independent vectors U.

Neuron n of block l writes a_n(t)·w_n at every token t (a_n = ``blocks.l.mlp.hook_post``, w_n = W_out[n]).
Each LATER block j > l reads that write through ln_1 (statistics frozen at the clean forward: μ_j(t),
σ_j(t)), head h's pooled-query attention row A^{j,h}[t] (CLS row, or the mean over patch queries for
average pooling) and its OV circuit; the result goes straight to the pooled residual r, and through the
final LayerNorm (frozen μ_f, σ_f) and the projection P. Only that path is kept (second order): no MLP, no
query/key change, and no later layer reading another later layer's response. The change of the output is

    φ_n(I) = (1/σ_f) Σ_{j>l} Σ_h s_{j,h,n}(I) · U_{j,h,n}
    s_{j,h,n}(I) = Σ_t A^{j,h}[t] · a_n(t) / σ_j(t)                       per image   [J, H, N]
    U_{j,h,n}    = ((γ_j ⊙ w_n) · W_V^h · W_O^h ⊙ γ_f) · P                 image-free  [J, H, N, D]

The c_proj bias b_out, written at every token, has the same form with a_n ≡ 1 and w = b_out: it is the
neuron-independent share, and Σ_n φ_n + φ_bias is the whole layer's second-order effect. ``normalized``
multiplies everything by 100/‖e‖ (the space of 100·e/‖e‖, where a dot with a unit class embedding is a
cosine logit). The official code also splits ln_1's mean and β, b_V, b_O and the final LN's μ_f, β_f over
neurons (shares 1/(K_j N), 1/(K_j H N), 1/(K_L K_j H N), K_j = 2j+1); that adds the same vector g(I)/N to
every neuron and cancels in centred effects. ``shares=True`` gives each neuron (φ_bias + g)/N as the paper's
code does; the default keeps φ_n pure and φ_bias (+ g) apart.

Only s (4·J·H·N bytes per image), σ_f, ‖e‖, the embedding and g are stored; effects [N, D] or their
projections onto directions are formed on demand, never [images, N, D].

**Through an attentional pooler** (CoCa; MAP: SigLIP, PE-Core) the embedding is read by the pooler's query 0,
which attends over the trunk's last residual x with A_pool[h', q] through ln_k (per-token statistics σ_k(q)
frozen). Write ω_{h'}(q) = A_pool[h', q]/σ_k(q) and V'^{h'} = W_V'^{h'} W_O'^{h'}. The neuron's write then
reaches the pooled vector r by two kinds of path (the pooler's MLP, like every MLP, is not on a second-order
path):

- directly (the entry ``later = L``, one "head" per pooler head h'; the last layer's neurons have this one):
      s_{L,h',n} = Σ_q ω_{h'}(q) a_n(q),        U_{L,h',n} = ((γ_k ⊙ w_n) V'^{h'} ⊙ γ_f) · P
- through a later block j's attention at every query q, then the pooler (one "head" per pair (h, h')):
      s_{j,(h,h'),n} = Σ_q ω_{h'}(q) Σ_t A^{j,h}[q, t] a_n(t)/σ_j(t)
      U_{j,(h,h'),n} = ((γ_k ⊙ ((γ_j ⊙ w_n) W_V^h W_O^h)) V'^{h'} ⊙ γ_f) · P
The head axis is H·H' for every entry (the direct entry's first H' slots are used, the rest are zero); without
a final LayerNorm (SigLIP) γ_f = 1 and σ_f = 1. The U tensor is J·H·H'·N·D: small towers only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from vit_lens_clip.decompose.fold import LNFold
from vit_lens_clip.decompose.reducers import Reducer
from vit_lens_clip.errors import UnsupportedTowerError
from vit_lens_clip.model.hooked_vit import HookedViT
from vit_lens_clip.model.pooling import compute_dtype

Hook = tuple[str, Callable]


def check_supported(model: HookedViT, layer: int) -> int:
    """Validate the model and layer; returns the layer index in [0, L−2] ([0, L−1] through a pooler)."""
    cfg = model.cfg
    tower = cfg.model_name
    if model.attn_pool is not None and any(_z_norm(b.attn) is not None for b in model.blocks):
        raise UnsupportedTowerError(f"{tower}: a sub-LayerNorm on the heads under an attentional pooler is not "
                                    "derived for the neuron lens (every query's statistics would enter)")
    if cfg.pool_type == "avg" and not cfg.final_ln_after_pool:
        raise UnsupportedTowerError(f"{tower}: average pooling with the LayerNorm applied before pooling has no "
                                    "pooled residual to fold (the neuron lens needs one)")
    if not -cfg.n_layers <= layer < cfg.n_layers:
        raise ValueError(f"layer {layer} out of range for a {cfg.n_layers}-layer model")
    layer %= cfg.n_layers
    if layer == cfg.n_layers - 1 and model.attn_pool is None:
        raise ValueError(f"layer {layer} is the last layer: no later attention reads its neurons")
    return layer


def _z_norm(attn) -> Optional[torch.nn.Module]:
    """EVA02's sub-LayerNorm on the concatenated heads (``attn.ln_z``), or None."""
    return getattr(attn, "ln_z", None)


def neuron_activation_hook(model: HookedViT, layer: int) -> tuple[str, Callable[[Tensor], Tensor]]:
    """The neuron activations a_n(t) whose writes are a_n(t)·W_out[n]: ``hook_post``, or for an MLP with a
    LayerNorm on its hidden units (EVA02) that norm's output γ_n (post_n − μ)/σ + β_n at frozen statistics."""
    mlp = model.blocks[layer].mlp
    ln = getattr(mlp, "ln", None)
    if ln is None:
        return f"blocks.{layer}.mlp.hook_post", lambda t: t
    return f"blocks.{layer}.mlp.ln.hook_normalized", lambda t: t * ln.w.to(t.dtype) + ln.b.to(t.dtype)


@dataclass
class SecondOrderStats:
    """Per-image statistics of layer ``layer``'s neurons (see the module docstring).

    s [I, J, H, N], s_bias [I, J, H] (the same sum with a ≡ 1), inv_scale = 1/σ_f [I], norm = ‖e‖ [I],
    embedding e [I, D], shares g [I, D] (zeros unless collected with ``shares=True``), indices [I],
    labels [I] (−1 where unknown).
    """

    layer: int
    later: list[int]
    s: Float[Tensor, "images later heads neurons"]
    s_bias: Float[Tensor, "images later heads"]
    inv_scale: Float[Tensor, " images"]
    norm: Float[Tensor, " images"]
    embedding: Float[Tensor, "images d_out"]
    shares: Float[Tensor, "images d_out"]
    indices: Int[Tensor, " images"]
    labels: Int[Tensor, " images"]

    TENSORS = ("s", "s_bias", "inv_scale", "norm", "embedding", "shares", "indices", "labels")

    def __len__(self) -> int:
        return self.s.shape[0]

    def bytes_per_image(self) -> int:
        """Stored bytes per image, all tensors."""
        return sum(getattr(self, k)[0].numel() * getattr(self, k).element_size() for k in self.TENSORS)

    def subset(self, rows: Tensor) -> "SecondOrderStats":
        return SecondOrderStats(self.layer, self.later, **{k: getattr(self, k)[rows] for k in self.TENSORS})

    @classmethod
    def concat(cls, parts: Sequence["SecondOrderStats"]) -> "SecondOrderStats":
        if not parts:
            raise ValueError("nothing to concatenate")
        if any(p.layer != parts[0].layer for p in parts):
            raise ValueError("cannot concatenate statistics of different layers")
        stats = cls(parts[0].layer, parts[0].later, **{k: torch.cat([getattr(p, k) for p in parts]) for k in cls.TENSORS})
        order = stats.indices.argsort(stable=True)
        return stats.subset(order)


class SecondOrderCapture:
    """Hooks that keep what s, s_bias, σ_f, ‖e‖ and g need for one batch; ``finish()`` reduces them."""

    def __init__(self, model: HookedViT, layer: int, shares: bool = False):
        self.model, self.layer, self.shares = model, check_supported(model, layer), shares
        self.pooler = model.attn_pool is not None
        if shares and any(_z_norm(b.attn) is not None or hasattr(b.mlp, "W_gate") for b in model.blocks):
            raise ValueError(f"{model.cfg.model_name}: shares=True is the official code's convention for plain "
                             "attention and MLPs; for EVA02 use shares=False")
        if shares and self.pooler:
            raise ValueError(f"{model.cfg.model_name}: shares=True is the official code's convention for a class "
                             "token or patch mean; through an attentional pooler use shares=False")
        L = model.cfg.n_layers
        self.later = list(range(self.layer + 1, L)) + ([L] if self.pooler else [])  # L: the pooler itself
        self.store: dict[str, Tensor] = {}

    def _keep(self, key: str, reduce: Callable[[Tensor], Tensor] = lambda t: t) -> Callable:
        def hook(t: Tensor, hook) -> None:
            self.store[key] = reduce(t.detach())

        return hook

    def hooks(self) -> list[Hook]:
        name, activation = neuron_activation_hook(self.model, self.layer)
        hooks = [(name, self._keep("post", activation)),
                 ("hook_pooled", self._keep("pooled")), ("hook_image_embed", self._keep("embedding"))]
        if self.pooler:
            hooks.append(("attn_pool.ln_k.hook_scale", self._keep("sigma.pool", lambda t: t[..., 0])))
            hooks.append(("attn_pool.attn.hook_pooled_pattern", self._keep("A.pool")))
        for j in self.later[: len(self.later) - self.pooler]:
            hooks.append((f"blocks.{j}.ln1.hook_scale", self._keep(f"sigma.{j}", lambda t: t[..., 0])))
            z_normed = _z_norm(self.model.blocks[j].attn) is not None  # EVA02: each query's σ_z enters
            pattern = "hook_pattern" if self.pooler or z_normed else "hook_pooled_pattern"  # every query row used
            hooks.append((f"blocks.{j}.attn.{pattern}", self._keep(f"A.{j}")))
            if z_normed:
                hooks.append((f"blocks.{j}.attn.ln_z.hook_scale", self._keep(f"sigma_z.{j}", lambda t: t[..., 0])))
            if self.shares:
                hooks.append((f"blocks.{j}.hook_resid_pre",
                              self._keep(f"mu.{j}", lambda t: t.to(compute_dtype(t.dtype)).mean(-1))))
        return hooks

    @torch.no_grad()
    def finish(self) -> dict[str, Tensor]:
        """s, s_bias, inv_scale, norm, embedding, shares for the batch (float32, or float64 for a float64 model)."""
        st, m = self.store, self.model
        dtype = compute_dtype(m.W_proj.dtype)
        post = st["post"].to(dtype)  # [B, T, N]
        s, s_bias = [], []
        for _entry, weights in self._token_weights(dtype):  # weights [B, heads, T]: how token t's write reaches r
            s.append(torch.einsum("bht,btn->bhn", weights, post))
            s_bias.append(weights.sum(-1))
        embedding = st["embedding"].to(dtype)
        if m.ln_final is not None:
            fold = LNFold.from_residual(st["pooled"].to(dtype), m.ln_final.w, m.ln_final.b, m.W_proj, m.ln_final.eps)
            inv_scale = 1 / fold.scale
        else:  # no final LayerNorm (SigLIP's MAP head): σ_f = 1
            fold, inv_scale = None, torch.ones(embedding.shape[0], dtype=dtype, device=embedding.device)
        out = {"s": torch.stack(s, 1), "s_bias": torch.stack(s_bias, 1), "inv_scale": inv_scale,
               "norm": embedding.norm(dim=-1), "embedding": embedding}
        out["shares"] = self._shares(fold, dtype) if self.shares else torch.zeros_like(embedding)
        self.store = {}
        return out

    def _token_weights(self, dtype: torch.dtype) -> Iterator[tuple[int, Tensor]]:
        """(later entry, weights [B, heads, T]) with s = Σ_t weights[t] a_n(t) (module docstring)."""
        st = self.store
        if not self.pooler:
            for j in self.later:
                A = st[f"A.{j}"].to(dtype)
                if f"sigma_z.{j}" in st:  # EVA02: Σ_q w_q A_q[h, t]/σ_z(q) over the pooled queries q
                    A = self.model.pool_tokens(A / st[f"sigma_z.{j}"].to(dtype)[:, None, :, None])
                yield j, A / st[f"sigma.{j}"].to(dtype)[:, None, :]
            return
        omega = st["A.pool"].to(dtype) / st["sigma.pool"].to(dtype)[:, None, :]  # [B, H', n_src]
        missing = self.model.cfg.n_ctx - omega.shape[-1]  # the pooler reads the patches only: prefix weight 0
        omega = torch.cat([omega.new_zeros(*omega.shape[:2], missing), omega], -1) if missing else omega
        H, Hp = self.model.cfg.n_heads, omega.shape[1]
        for j in self.later[:-1]:
            through = torch.einsum("bpq,bhqt->bhpt", omega, st[f"A.{j}"].to(dtype))  # [B, H, H', T]
            yield j, (through / st[f"sigma.{j}"].to(dtype)[:, None, None, :]).flatten(1, 2)
        yield self.later[-1], torch.cat([omega, omega.new_zeros(omega.shape[0], H * Hp - Hp, omega.shape[-1])], 1)

    def _shares(self, fold: LNFold, dtype: torch.dtype) -> Float[Tensor, "batch d_out"]:
        """g(I): the official code's μ/β/bias shares of every neuron of the layer, summed over neurons: each
        later head's share o of ln_1's μ and β, b_V and b_O, folded through the final LN with share 1/(K_L K_j H)
        (``LNFold.fold``, the equal-share convention)."""
        m, st = self.model, self.store
        L, H = m.cfg.n_layers, m.cfg.n_heads
        g = 0
        for j in self.later:
            attn, ln1, K_j, K_L = m.blocks[j].attn, m.blocks[j].ln1, 2 * j + 1, 2 * L + 1
            W_V, b_V, W_O, b_O = (x.to(dtype) for x in (attn.W_V, attn.b_V, attn.W_O, attn.b_O))
            A = st[f"A.{j}"].to(dtype)  # [B, H, T]
            mu_over_sigma = st[f"mu.{j}"].to(dtype) / st[f"sigma.{j}"].to(dtype)  # [B, T]
            x = (-torch.einsum("bht,bt->bh", A, mu_over_sigma)[..., None] * ln1.w.to(dtype) + ln1.b.to(dtype)) / K_j
            o = torch.einsum("bhd,hde,hef->bhf", x, W_V, W_O) + torch.einsum("he,hef->hf", b_V, W_O) / K_j + b_O / (K_j * H)
            g = g + fold.fold(o, 1 / (K_L * K_j * H)).sum(1)
        return g


class SecondOrderReducer(Reducer):
    """Streams a dataset into ``SecondOrderStats`` of one layer; resumes and merges like the other reducers.

    Pass ``reducer.hooks()`` to ``run_reducers(extra_hooks=...)`` (or use ``collect_second_order``).
    """

    def __init__(self, model: HookedViT, layer: int, shares: bool = False):
        self.capture = SecondOrderCapture(model, layer, shares)
        self.layer, self.later = self.capture.layer, self.capture.later
        self.rows: list[dict[str, Tensor]] = []

    def hooks(self) -> list[Hook]:
        return self.capture.hooks()

    def update(self, parts, batch) -> None:
        row = {k: v.cpu() for k, v in self.capture.finish().items()}
        row["indices"] = batch.indices.cpu()
        labels = getattr(batch, "labels", None)
        row["labels"] = labels.cpu() if labels is not None else torch.full_like(row["indices"], -1)
        self.rows.append(row)

    def result(self) -> SecondOrderStats:
        if not self.rows:
            raise ValueError("SecondOrderReducer saw no images")
        return SecondOrderStats.concat([SecondOrderStats(self.layer, self.later, **r) for r in self.rows])

    def state_dict(self) -> dict[str, Tensor]:
        if not self.rows:
            return {}
        stats = self.result()
        return {k: getattr(stats, k) for k in SecondOrderStats.TENSORS}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.rows = [dict(state)] if state else []

    def merge(self, other: "SecondOrderReducer") -> None:
        if other.layer != self.layer:
            raise ValueError("cannot merge reducers of different layers")
        self.rows += other.rows


def collect_second_order(
    model: HookedViT,
    images: Float[Tensor, "n channel height width"],
    layer: int,
    labels: Optional[Int[Tensor, " n"]] = None,
    batch_size: int = 64,
    shares: bool = False,
    progress: bool = False,
) -> SecondOrderStats:
    """Second-order statistics of ``layer`` for a tensor of images (one forward with only these hooks per batch)."""
    return collect_layers(model, images, [layer], labels, batch_size, shares, progress)[check_supported(model, layer)]


def collect_layers(
    model: HookedViT,
    images: Float[Tensor, "n channel height width"],
    layers: Sequence[int],
    labels: Optional[Int[Tensor, " n"]] = None,
    batch_size: int = 64,
    shares: bool = False,
    progress: bool = False,
) -> dict[int, SecondOrderStats]:
    """``collect_second_order`` for several layers in the same forward passes."""
    captures = {c.layer: c for c in (SecondOrderCapture(model, l, shares) for l in layers)}
    rows: dict[int, list[dict[str, Tensor]]] = {l: [] for l in captures}
    device = model.W_proj.device
    for start in tqdm(range(0, images.shape[0], batch_size), desc="second-order statistics", disable=not progress):
        batch = images[start : start + batch_size].to(device)
        with torch.no_grad():
            model.run_with_hooks(batch, fwd_hooks=[h for c in captures.values() for h in c.hooks()])
        index = torch.arange(start, start + batch.shape[0])
        label = labels[start : start + batch.shape[0]].cpu() if labels is not None else torch.full_like(index, -1)
        for l, capture in captures.items():
            rows[l].append({**{k: v.cpu() for k, v in capture.finish().items()}, "indices": index, "labels": label})
    return {l: SecondOrderStats.concat([SecondOrderStats(l, captures[l].later, **r) for r in rows[l]]) for l in captures}


def neuron_vectors(model: HookedViT, layer: int, dtype: torch.dtype = torch.float32) -> tuple[
        Float[Tensor, "later heads neurons d_out"], Float[Tensor, "later heads d_out"]]:
    """U_{j,h,n} = ((γ_j ⊙ w_n)·W_V^h·W_O^h ⊙ γ_f)·P and the same for b_out (image-independent)."""
    layer = check_supported(model, layer)
    with torch.no_grad():
        return _neuron_vectors(model, layer, dtype)


def _neuron_vectors(model: HookedViT, layer: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    mlp = model.blocks[layer].mlp
    writes = torch.cat([mlp.W_out, mlp.b_out[None]]).to(dtype)  # [N+1, d]
    gamma_f = model.ln_final.w.to(dtype) if model.ln_final is not None else 1
    P = model.W_proj.to(dtype)
    pool = model.attn_pool
    U = []
    for j in range(layer + 1, model.cfg.n_layers):
        attn = model.blocks[j].attn
        read = writes * model.blocks[j].ln1.w.to(dtype)  # [N+1, d]
        W_V = attn.W_V.to(dtype)
        if _z_norm(attn) is not None:  # EVA02: the sub-LayerNorm's γ on each head's slice (1/σ_z is in s)
            W_V = W_V * _z_norm(attn).w.to(dtype).reshape(attn.n_heads, 1, attn.d_head)
        ov = torch.einsum("nd,hde,hef->hnf", read, W_V, attn.W_O.to(dtype))  # [H, N+1, d]
        if pool is not None:  # then through the pooler's ln_k and every pooler head: [H·H', N+1, d_pool]
            ov = torch.einsum("hnf,pfg->hpng", ov * pool.ln_k.w.to(dtype), _pooler_ov(pool, dtype)).flatten(0, 1)
        U.append((ov * gamma_f) @ P)
    if pool is not None:  # the pooler reads the write directly; its H' heads fill the first slots
        direct = torch.einsum("nf,pfg->png", writes * pool.ln_k.w.to(dtype), _pooler_ov(pool, dtype))
        H, Hp = model.cfg.n_heads, direct.shape[0]
        direct = torch.cat([direct, direct.new_zeros(H * Hp - Hp, *direct.shape[1:])])
        U.append((direct * gamma_f) @ P)
    U = torch.stack(U)  # [J, heads, N+1, D]
    return U[:, :, :-1].contiguous(), U[:, :, -1].contiguous()


def _pooler_ov(pool, dtype: torch.dtype) -> Float[Tensor, "heads d_context d_pool"]:
    """The pooler's OV circuits W_V'^{h'} W_O'^{h'}."""
    return torch.einsum("pfe,peg->pfg", pool.attn.W_V.to(dtype), pool.attn.W_O.to(dtype))


class NeuronEffects:
    """φ_n(I) formed on demand from ``SecondOrderStats`` and the model's weights.

    ``normalized`` (default) puts effects in the space of 100·e/‖e‖ (the paper's scale); ``shares`` gives each
    neuron (φ_bias + g)/N, the official code's convention (cancels in centred effects).
    """

    def __init__(self, model: HookedViT, stats: SecondOrderStats, normalized: bool = True, shares: bool = False,
                 U: Optional[tuple[Tensor, Tensor]] = None):
        self.stats, self.normalized, self.shares = stats, normalized, shares
        self.dtype = stats.s.dtype
        self.U, self.U_bias = U if U is not None else neuron_vectors(model, stats.layer, self.dtype)
        self.U, self.U_bias = self.U.to(self.dtype).cpu(), self.U_bias.to(self.dtype).cpu()
        self.n_neurons, self.d_out = self.U.shape[2], self.U.shape[3]

    def with_stats(self, stats: SecondOrderStats) -> "NeuronEffects":
        """The same weights (U) applied to another set of images."""
        out = object.__new__(NeuronEffects)
        out.__dict__.update(self.__dict__)
        out.stats = stats
        return out

    def __len__(self) -> int:
        return len(self.stats)

    def scale(self, rows: Int[Tensor, "*rows"]) -> Float[Tensor, "*rows"]:
        """1/σ_f, times 100/‖e‖ when normalised; shaped like ``rows`` (callers pass [batch] and [batch, k])."""
        scale = self.stats.inv_scale[rows]
        return scale * 100 / self.stats.norm[rows] if self.normalized else scale

    def embedding(self, rows: Optional[Tensor] = None) -> Float[Tensor, "batch d_out"]:
        """e, or 100·e/‖e‖ when normalised."""
        rows = torch.arange(len(self)) if rows is None else rows
        e = self.stats.embedding[rows]
        return 100 * e / self.stats.norm[rows, None] if self.normalized else e

    def bias_effect(self, rows: Tensor) -> Float[Tensor, "batch d_out"]:
        """φ_bias + g: the neuron-independent share of the layer's second-order effect."""
        out = torch.einsum("bjh,jhd->bd", self.stats.s_bias[rows], self.U_bias) * self.scale(rows)[:, None]
        g = self.stats.shares[rows]
        return out + (g * 100 / self.stats.norm[rows, None] if self.normalized else g)

    def effects(self, rows: Tensor) -> Float[Tensor, "batch neurons d_out"]:
        """φ_n(I) for every neuron of the given images."""
        out = torch.einsum("bjhn,jhnd->bnd", self.stats.s[rows], self.U) * self.scale(rows)[:, None, None]
        if self.shares:
            out = out + self.bias_effect(rows)[:, None] / self.n_neurons
        return out

    def layer_effect(self, rows: Tensor) -> Float[Tensor, "batch d_out"]:
        """Σ_n φ_n + φ_bias (+ g): the layer's whole second-order effect."""
        neurons = torch.einsum("bjhn,jhnd->bd", self.stats.s[rows], self.U) * self.scale(rows)[:, None]
        return neurons + self.bias_effect(rows)

    def chunks(self, batch_size: int = 64, progress: bool = False, desc: str = "neuron effects") -> Iterator[Tensor]:
        """Row index chunks over the images."""
        for start in tqdm(range(0, len(self), batch_size), desc=desc, disable=not progress):
            yield torch.arange(start, min(start + batch_size, len(self)))

    def effects_at(self, rows: Int[Tensor, "k neurons"], neurons: Int[Tensor, " neurons"]) -> Float[Tensor, "k neurons d_out"]:
        """φ_n(I) for given (image, neuron) pairs: image rows[i, c] for neuron neurons[c]."""
        s = self.stats.s[rows[..., None, None], torch.arange(self.U.shape[0])[:, None], torch.arange(self.U.shape[1]),
                         neurons[:, None, None]]  # [k, c, J, H]
        out = torch.einsum("kcjh,jhcd->kcd", s, self.U[:, :, neurons]) * self.scale(rows)[..., None]
        if self.shares:
            out = out + self.bias_effect(rows.reshape(-1)).reshape(*rows.shape, -1) / self.n_neurons
        return out

    def project(self, directions: Float[Tensor, "d_out k"], rows: Optional[Tensor] = None) -> Float[Tensor, "batch neurons k"]:
        """φ_n(I) · directions, from (U · directions) without forming the effects."""
        rows = torch.arange(len(self)) if rows is None else rows
        UC = self.U @ directions.to(self.dtype).cpu()  # [J, H, N, k]
        out = torch.einsum("bjhn,jhnk->bnk", self.stats.s[rows], UC) * self.scale(rows)[:, None, None]
        if self.shares:
            out = out + (self.bias_effect(rows) @ directions.to(self.dtype).cpu())[:, None] / self.n_neurons
        return out

    def mean(self, batch_size: int = 1024) -> Float[Tensor, "neurons d_out"]:
        """φ̄_n: the mean effect over the images, in float64 without forming any effect. φ_n is linear in the
        scaled statistics, so φ̄_n = Σ_jh s̄[j, h, n] U[j, h, n] with s̄ = mean_I scale(I) s(I) (and the shares'
        mean bias effect / N): O(I·J·H·N) instead of O(I·J·H·N·D)."""
        s_mean = torch.zeros(self.stats.s.shape[1:], dtype=torch.float64)
        s_bias_mean = torch.zeros(self.stats.s_bias.shape[1:], dtype=torch.float64)
        g_mean = torch.zeros(self.d_out, dtype=torch.float64)
        for rows in self.chunks(batch_size):
            scale = self.scale(rows).double()
            s_mean += torch.einsum("b,bjhn->jhn", scale, self.stats.s[rows].double())
            if self.shares:
                s_bias_mean += torch.einsum("b,bjh->jh", scale, self.stats.s_bias[rows].double())
                g = self.stats.shares[rows].double()
                g_mean += (g * 100 / self.stats.norm[rows, None].double() if self.normalized else g).sum(0)
        mean = torch.einsum("jhn,jhnd->nd", s_mean, self.U.double())
        if self.shares:
            mean += (torch.einsum("jh,jhd->d", s_bias_mean, self.U_bias.double()) + g_mean) / self.n_neurons
        return (mean / len(self)).to(self.dtype)

    def centred_norms(self, mean: Float[Tensor, "neurons d_out"], batch_size: int = 64) -> Float[Tensor, "images neurons"]:
        """‖δ_n(I)‖ = ‖φ_n(I) − φ̄_n‖ for every image and neuron."""
        return torch.cat([(self.effects(rows) - mean).norm(dim=-1) for rows in self.chunks(batch_size)])
