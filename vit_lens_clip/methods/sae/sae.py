"""A sparse autoencoder (SAE) over one activation of the image tower, with TransformerLens hook points.

For an activation x [..., d_in] (optionally normalised, see ``normalize``):

    f   = act(pre),   pre = (n(x) − b_dec·[apply_b_dec_to_input]) · W_enc + b_enc        (encode)
    x̂   = n⁻¹(f · W_dec + b_dec)                                                         (decode)
    act = ReLU ("relu"), ReLU of the k largest pre-activations ("topk"), or ReLU(pre)·[pre > θ] ("jumprelu")

``n`` is SAELens' run-time normalisation: "none"; "expected_average_only_in" (x·s, x̂/s with a stored
scalar s); "constant_norm_rescale" (x·√d/‖x‖ per token); "layer_norm" ((x − μ)/(std + 1e-5) per token,
std unbiased, undone on the output with the same token's μ and std). Spliced into a model (``splice.py``)
the output is x̂, or x̂ + (x − x̂_clean) with the error term, where x̂_clean is the reconstruction without any
intervention on the hooks below, so the output equals x exactly until a feature is edited.

Hook points (children of the SAE; spliced at ``H`` they are named ``H.sae.hook_sae_*``):
hook_sae_input, hook_sae_acts_pre, hook_sae_acts_post, hook_sae_recons, hook_sae_error, hook_sae_output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

Architecture = Literal["relu", "topk", "jumprelu"]
Normalization = Literal["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]
Positions = Literal["all", "cls", "patches"]
ARCHITECTURES = ("relu", "topk", "jumprelu")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
POSITIONS = ("all", "cls", "patches")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class SAEConfig:
    """What an SAE needs to run and where it reads: d_in → d_sae features at ``hook_name``.

    ``positions``: the token positions it was trained on ("all", "cls" = position 0 only, "patches" =
    positions 1..); spliced, it runs on those and leaves the others unchanged.
    """

    d_in: int
    d_sae: int
    hook_name: str
    architecture: Architecture = "relu"
    k: Optional[int] = None
    normalize: Normalization = "none"
    scaling_factor: Optional[float] = None
    apply_b_dec_to_input: bool = True
    dtype: str = "float32"
    positions: Positions = "all"
    source: str = "vit_lens_clip"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"SAE architecture {self.architecture!r} is not supported; expected one of {ARCHITECTURES}")
        if self.architecture == "topk" and (self.k is None or self.k < 1 or self.k > self.d_sae):
            raise ValueError(f"a TopK SAE needs 1 <= k <= d_sae={self.d_sae}, got k={self.k}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalisation {self.normalize!r} is not supported; expected one of {NORMALIZATIONS}")
        if self.normalize == "expected_average_only_in" and not self.scaling_factor:
            raise ValueError("normalisation 'expected_average_only_in' needs its scaling factor (none was stored)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not supported; expected one of {tuple(DTYPES)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Stats = tuple[Optional[Tensor], Optional[Tensor]]


class SparseAutoencoder(nn.Module):
    """encode / decode / forward of an SAE (math in the module docstring); weights W_enc [d_in, d_sae],
    W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], threshold [d_sae] (JumpReLU)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dtype = DTYPES[cfg.dtype]
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.use_error_term = False
        self.hook_sae_input = HookPoint()
        self.hook_sae_acts_pre = HookPoint()
        self.hook_sae_acts_post = HookPoint()
        self.hook_sae_recons = HookPoint()
        self.hook_sae_error = HookPoint()
        self.hook_sae_output = HookPoint()

    # ------------------------------------------------------------------ pieces
    def normalize_in(self, x: Tensor) -> tuple[Tensor, Stats]:
        """n(x) and the per-token statistics that ``normalize_out`` needs."""
        how = self.cfg.normalize
        if how == "expected_average_only_in":
            return x * self.cfg.scaling_factor, (None, None)
        if how == "constant_norm_rescale":
            scale = self.cfg.d_in**0.5 / x.norm(dim=-1, keepdim=True)
            return x * scale, (None, scale)
        if how == "layer_norm":
            mu = x.mean(-1, keepdim=True)
            std = (x - mu).std(-1, keepdim=True)
            return (x - mu) / (std + 1e-5), (mu, std)
        return x, (None, None)

    def normalize_out(self, x: Tensor, stats: Stats) -> Tensor:
        how, (mu, scale) = self.cfg.normalize, stats
        if how == "expected_average_only_in":
            return x / self.cfg.scaling_factor
        if how == "constant_norm_rescale":
            return x / scale
        if how == "layer_norm":
            return x * scale + mu
        return x

    def pre_acts(self, x_normed: Tensor) -> Tensor:
        """pre = (n(x) − b_dec) · W_enc + b_enc (b_dec subtracted only when the format says so)."""
        if self.cfg.apply_b_dec_to_input:
            x_normed = x_normed - self.b_dec
        return x_normed @ self.W_enc + self.b_enc

    def activation(self, pre: Tensor) -> Tensor:
        if self.cfg.architecture == "topk":
            top = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        if self.cfg.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold)
        return pre.relu()

    # --------------------------------------------------------------- public
    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations f (through the hooks, so hooks on the activations apply)."""
        return self._encode(self._check(x))[0]

    def decode(self, acts: Float[Tensor, "... d_sae"], stats: Stats = (None, None)) -> Float[Tensor, "... d_in"]:
        """x̂ = n⁻¹(f · W_dec + b_dec); per-token normalisations need the input's ``stats``."""
        if self.cfg.normalize in ("constant_norm_rescale", "layer_norm") and stats[1] is None:
            raise ValueError(f"decoding a '{self.cfg.normalize}' SAE needs the input's statistics: use forward()")
        return self.hook_sae_recons(self.normalize_out(acts @ self.W_dec + self.b_dec, stats))

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """x̂, or x̂ + (x − x̂_clean) when ``use_error_term`` (then equal to x until a hook edits a feature)."""
        x = self._check(x)
        in_dtype = x.dtype
        x = self.hook_sae_input(x.to(self.W_enc.dtype))
        acts, stats = self._encode(x)
        recons = self.decode(acts, stats)
        if self.use_error_term:
            x_normed, clean_stats = self.normalize_in(x)
            clean = self.normalize_out(self.activation(self.pre_acts(x_normed)) @ self.W_dec + self.b_dec, clean_stats)
            recons = recons + self.hook_sae_error(x - clean)
        return self.hook_sae_output(recons).to(in_dtype)

    def _encode(self, x: Tensor) -> tuple[Tensor, Stats]:
        x_normed, stats = self.normalize_in(x.to(self.W_enc.dtype))
        pre = self.hook_sae_acts_pre(self.pre_acts(x_normed))
        return self.hook_sae_acts_post(self.activation(pre)), stats

    def _check(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"SAE at {self.cfg.hook_name} reads width {self.cfg.d_in}, "
                             f"got an activation of shape {tuple(x.shape)}")
        return x

    def extra_repr(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.architecture == "topk" else ""
        return f"hook={c.hook_name!r}, d_in={c.d_in}, d_sae={c.d_sae}, {c.architecture}{k}, normalize={c.normalize!r}"
