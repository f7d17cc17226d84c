"""ViTConfig: TransformerLens field names plus the fields a CLIP vision tower needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

import torch

from vit_lens_clip.model.pooling import POOL_TYPES, PoolType, n_prefix_tokens

ActFn = Literal["gelu", "quick_gelu", "gelu_tanh", "silu"]
ACT_FNS = ("gelu", "quick_gelu", "gelu_tanh", "silu")
MLP_TYPES = ("mlp", "swiglu")


@dataclass
class AttentionPoolConfig:
    """An attentional pooler: learned queries cross-attend to the tower's tokens; query 0 is pooled.

    CoCa (open_clip): ``attn(ln_q(query), ln_k(tokens))``, then ``ln_final`` and the projection.
    MAP (timm ``AttentionPoolLatent``; SigLIP, ``global_pool="map"``): the queries are not normalised
    (``query_norm=False``), ``ln_k`` is the trunk's final norm (per token), and an MLP with a residual follows:
    ``a + mlp(ln_mlp(a))`` (``d_mlp > 0``). ``include_prefix=False`` keeps prefix tokens out of the sources.
    """

    n_queries: int
    n_heads: int
    d_model: int  # output width of the pooler (open_clip CoCa: the tower's output_dim)
    d_context: int  # key/value input width (the tower's width)
    eps: float = 1e-5
    d_query: int = -1  # width of the learned queries (-1: d_model)
    d_attn: int = -1  # n_heads * d_head (-1: d_model)
    query_norm: bool = True
    d_mlp: int = 0
    act_fn: str = "gelu"
    include_prefix: bool = True

    def __post_init__(self) -> None:
        if self.d_query == -1:
            self.d_query = self.d_model
        if self.d_attn == -1:
            self.d_attn = self.d_model
        if self.d_attn % self.n_heads:
            raise ValueError(f"pooler width {self.d_attn} is not divisible by its {self.n_heads} heads")

    @property
    def d_head(self) -> int:
        return self.d_attn // self.n_heads


@dataclass
class ViTConfig:
    """Configuration of a HookedViT.

    Field names follow TransformerLens (``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_mlp``,
    ``act_fn``, ``normalization_type``, ``eps``) so that ``transformer_lens.ActivationCache`` works
    unchanged. The rest describe the vision tower: image and patch geometry, pooling and projection.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    output_dim: int
    # an int is accepted (a square) and made a pair in __post_init__; afterwards both are always pairs
    image_size: int | tuple[int, int] = (224, 224)
    patch_size: int | tuple[int, int] = (16, 16)
    d_head: int = -1
    act_fn: ActFn = "gelu"
    eps: float = 1e-5
    normalization_type: str = "LN"
    pool_type: PoolType = "tok"
    has_ln_pre: bool = True
    final_ln_after_pool: bool = False
    attention_pool: Optional[AttentionPoolConfig] = None
    class_token: bool = True
    n_registers: int = 0
    patch_bias: bool = False
    has_ln_final: bool = True
    proj_bias: bool = False
    rotary: str = ""  # "" | "interleave" | "half": rotary embedding of the patches' q, k (PE-Core, EVA02)
    attn_z_norm: bool = False  # EVA02: a LayerNorm on the concatenated head outputs z before W_O (attn.ln_z)
    mlp_type: str = "mlp"  # "mlp": act(x·W_in + b_in)·W_out; "swiglu": silu(x·W_gate + b_gate) ⊙ (x·W_in + b_in)
    mlp_norm: bool = False  # EVA02: a LayerNorm on the MLP's hidden activations before W_out (mlp.ln)
    ln_eps: dict = field(default_factory=dict)  # LayerNorm module name -> eps, where it differs from ``eps``
    in_channels: int = 3
    model_name: str = "custom"
    dtype: torch.dtype = torch.float32
    # TransformerLens fields that ActivationCache reads.
    attn_only: bool = False
    final_rms: bool = False

    def __post_init__(self) -> None:
        self.image_size = _pair(self.image_size)
        self.patch_size = _pair(self.patch_size)
        self.d_head = head_width(self.d_model, self.n_heads, self.d_head)
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn must be one of {ACT_FNS}, got {self.act_fn!r}")
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type must be one of {POOL_TYPES}, got {self.pool_type!r}")
        if self.mlp_type not in MLP_TYPES:
            raise ValueError(f"mlp_type must be one of {MLP_TYPES}, got {self.mlp_type!r}")
        if self.rotary not in ("", "interleave", "half"):
            raise ValueError(f"rotary must be '', 'interleave' or 'half', got {self.rotary!r}")
        if self.pool_type == "map" and self.attention_pool is None:
            raise ValueError("pool_type 'map' needs an attention_pool config")
        if self.pool_type == "tok" and not self.class_token:
            raise ValueError("token pooling needs a class token")
        for i in range(2):
            if self.image_size[i] % self.patch_size[i]:
                raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def n_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def n_prefix(self) -> int:
        """Tokens before the patches: the class token (if any) and the register tokens."""
        return n_prefix_tokens(self.class_token, self.n_registers)

    @property
    def n_ctx(self) -> int:
        """Tokens in the residual stream: the prefix tokens plus the patches."""
        return self.n_patches + self.n_prefix

    @property
    def d_pool(self) -> int:
        """Width of the pooled vector that ``ln_final`` and ``W_proj`` act on."""
        return self.attention_pool.d_model if self.attention_pool is not None else self.d_model

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dtype"] = str(self.dtype).removeprefix("torch.")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        d = dict(d)
        if isinstance(d.get("dtype"), str):
            d["dtype"] = getattr(torch, d["dtype"])
        for key in ("image_size", "patch_size"):  # JSON stores the pairs as lists
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        if d.get("attention_pool") is not None and isinstance(d["attention_pool"], dict):
            d["attention_pool"] = AttentionPoolConfig(**d["attention_pool"])
        return cls(**d)


def head_width(d_model: int, n_heads: int, d_head: int = -1) -> int:
    """d_head, by default d_model / n_heads; the heads must tile the residual: n_heads · d_head = d_model."""
    if d_head == -1:
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        d_head = d_model // n_heads
    if n_heads * d_head != d_model:
        raise ValueError("n_heads * d_head must equal d_model")
    return d_head


def _pair(x) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 2:
        raise ValueError(f"expected an int or a pair, got {x}")
    return x
