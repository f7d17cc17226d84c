"""ViTConfig: TransformerLens field names plus the fields a CLIP vision tower needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

import torch

PoolType = Literal["tok", "avg"]
ActFn = Literal["gelu", "quick_gelu"]


@dataclass
class AttentionPoolConfig:
    """CoCa-style attentional pooler: learned queries cross-attend to the tokens.

    The pooled image embedding is query 0's output (after ``ln_final``), as in open_clip's CoCa.
    """

    n_queries: int
    n_heads: int
    d_model: int  # query / output width (open_clip: the tower's output_dim)
    d_context: int  # key/value input width (the tower's width)
    eps: float = 1e-5

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


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
    image_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (16, 16)
    d_head: int = -1
    act_fn: ActFn = "gelu"
    eps: float = 1e-5
    normalization_type: str = "LN"
    pool_type: PoolType = "tok"
    has_ln_pre: bool = True
    final_ln_after_pool: bool = False
    attention_pool: Optional[AttentionPoolConfig] = None
    in_channels: int = 3
    model_name: str = "custom"
    dtype: torch.dtype = torch.float32
    # TransformerLens fields that ActivationCache reads.
    attn_only: bool = False
    final_rms: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_size = _pair(self.image_size)
        self.patch_size = _pair(self.patch_size)
        if self.d_head == -1:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
            self.d_head = self.d_model // self.n_heads
        if self.n_heads * self.d_head != self.d_model:
            raise ValueError("n_heads * d_head must equal d_model")
        if self.act_fn not in ("gelu", "quick_gelu"):
            raise ValueError(f"act_fn must be 'gelu' or 'quick_gelu', got {self.act_fn!r}")
        if self.pool_type not in ("tok", "avg"):
            raise ValueError(f"pool_type must be 'tok' or 'avg', got {self.pool_type!r}")
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
    def n_ctx(self) -> int:
        """Tokens in the residual stream: one class token plus the patches."""
        return self.n_patches + 1

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
        if d.get("attention_pool") is not None and isinstance(d["attention_pool"], dict):
            d["attention_pool"] = AttentionPoolConfig(**d["attention_pool"])
        return cls(**d)


def _pair(x) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    x = tuple(int(v) for v in x)
    if len(x) != 2:
        raise ValueError(f"expected an int or a pair, got {x}")
    return x
