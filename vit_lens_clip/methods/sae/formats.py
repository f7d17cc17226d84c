"""Read and write SAEs on disk without importing the libraries that made them.

SAELens' folder: ``cfg.json`` + ``sae_weights.safetensors`` (W_enc [d_in, d_sae], W_dec, b_enc, b_dec,
threshold for JumpReLU). Both config layouts are read: 6.x (``architecture`` standard/topk/jumprelu, ``k``,
``metadata.hook_name``) and 5.x (``hook_name`` at the top, ``activation_fn_str`` relu/topk with
``activation_fn_kwargs.k``).

The peer library's (ViT-Prisma's) folder: ``config.json`` + one ``*.safetensors`` with the same weight names
(or, for older checkpoints, one ``*.pt`` holding a plain tensor state dict, read with ``weights_only=True``).
Its config names the hook as ``hook_point`` or ``blocks.{hook_point_layer}.{layer_subtype}``, gives d_sae or
``expansion_factor``, ``activation_fn_str`` relu/topk, ``normalize_activations`` (its default: "layer_norm"),
the dtype as a string or ``{"__type__": "torch.dtype", "value": "torch.float32"}``, and ``cls_token_only`` /
``use_patches_only`` for SAEs trained on some token positions only.

Every mapped field is checked: width of the weights against d_in / d_sae, a known architecture,
normalisation and dtype, no per-head hooks (``hook_head_index``), and a live ``sae_lens.SAE`` is converted
from its own config and state dict (``from_sae_lens``; needs the optional extra ``[sae]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from safetensors.torch import load_file, save_file

from vit_lens_clip.methods.sae.sae import DTYPES, SAEConfig, SparseAutoencoder

SAELENS_CONFIG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
PEER_CONFIG = "config.json"
_ARCH_FROM_SAELENS = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu"}


class SAEFormatError(ValueError):
    """An SAE folder or object whose fields cannot be mapped (the message says which)."""


def _dtype_name(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("value", "float32")
    if isinstance(value, torch.dtype):
        value = str(value)
    name = str(value or "float32").replace("torch.", "")
    name = {"float": "float32", "half": "float16", "double": "float64"}.get(name, name)
    if name not in DTYPES:
        raise SAEFormatError(f"SAE dtype {value!r} is not supported; expected one of {tuple(DTYPES)}")
    return name


def _reject_head_index(cfg: Mapping[str, Any], *keys: str) -> None:
    for key in keys:
        if cfg.get(key) is not None:
            raise SAEFormatError(f"per-head SAEs ({key}={cfg[key]}) are not supported: splice on a full-width hook")


def _build(cfg: SAEConfig, weights: Mapping[str, torch.Tensor], where: str) -> SparseAutoencoder:
    need = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_in), "b_enc": (cfg.d_sae,), "b_dec": (cfg.d_in,)}
    if cfg.architecture == "jumprelu":
        need["threshold"] = (cfg.d_sae,)
        if "threshold" not in weights and "log_threshold" in weights:
            weights = {**weights, "threshold": weights["log_threshold"].exp()}
    for name, shape in need.items():
        if name not in weights:
            raise SAEFormatError(f"{where}: weight {name!r} is missing (found {sorted(weights)})")
        if tuple(weights[name].shape) != shape:
            raise SAEFormatError(f"{where}: {name} has shape {tuple(weights[name].shape)}, but the config says {shape} "
                                 f"(d_in={cfg.d_in}, d_sae={cfg.d_sae})")
    sae = SparseAutoencoder(cfg)
    dtype = DTYPES[cfg.dtype]
    with torch.no_grad():
        for name in need:
            getattr(sae, name).copy_(weights[name].to(dtype))
    return sae


def _checked(make, where: str) -> SAEConfig:
    try:
        return make()
    except (TypeError, KeyError) as e:
        raise SAEFormatError(f"{where}: missing or malformed config field ({e})") from e
    except ValueError as e:
        if isinstance(e, SAEFormatError):
            raise
        raise SAEFormatError(f"{where}: {e}") from e


# ------------------------------------------------------------------------------------------ SAELens


def sae_lens_config(raw: Mapping[str, Any], where: str = "SAELens cfg.json") -> SAEConfig:
    """Map a SAELens cfg.json (5.x or 6.x layout) onto ``SAEConfig``."""
    meta = dict(raw.get("metadata") or {})
    hook = raw.get("hook_name") or meta.get("hook_name")
    if not hook:
        raise SAEFormatError(f"{where}: no hook_name (neither at the top nor in metadata)")
    _reject_head_index({**meta, **raw}, "hook_head_index")
    if raw.get("reshape_activations", "none") not in ("none", None):
        raise SAEFormatError(f"{where}: reshape_activations={raw['reshape_activations']!r} is not supported")
    arch = raw.get("architecture", "standard")
    if arch == "standard" and raw.get("activation_fn_str", "relu") == "topk":
        arch = "topk"
    if arch not in _ARCH_FROM_SAELENS:
        raise SAEFormatError(f"{where}: architecture {arch!r} is not supported (standard, topk, jumprelu)")
    if raw.get("rescale_acts_by_decoder_norm"):
        raise SAEFormatError(f"{where}: rescale_acts_by_decoder_norm is not supported")
    k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k"))

    def make() -> SAEConfig:
        return SAEConfig(
            d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), hook_name=str(hook), architecture=_ARCH_FROM_SAELENS[arch],
            k=None if k is None else int(k), normalize=raw.get("normalize_activations") or "none",
            scaling_factor=raw.get("scaling_factor"), apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
            dtype=_dtype_name(raw.get("dtype")), source="sae_lens",
            metadata={k2: v for k2, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))},
        )

    return _checked(make, where)


def load_sae_lens(path: str | Path) -> SparseAutoencoder:
    """An SAE from a SAELens folder (cfg.json + sae_weights.safetensors), read without sae_lens."""
    path = Path(path)
    cfg_file, weights_file = path / SAELENS_CONFIG, path / SAELENS_WEIGHTS
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise SAEFormatError(f"{path} is not a SAELens SAE folder: {f.name} is missing")
    raw, weights = json.loads(cfg_file.read_text()), load_file(str(weights_file))
    if raw.get("scaling_factor") is None and "scaling_factor" in weights:  # stored with the weights
        raw["scaling_factor"] = float(weights["scaling_factor"].reshape(-1)[0])
    return _build(sae_lens_config(raw, str(cfg_file)), weights, str(weights_file))


def save_sae_lens(sae: SparseAutoencoder, path: str | Path, extra_metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``sae`` as a SAELens 6.x folder (cfg.json + sae_weights.safetensors) that SAELens loads as we do.

    SAELens does not apply a stored scale for "expected_average_only_in" at inference, so a constant input
    scale s is folded into the weights (exact): W_enc·s, W_dec/s, b_dec/s, normalisation "none".
    """
    c = sae.cfg
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}[c.architecture]
    names = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if c.architecture == "jumprelu" else [])
    weights = {n: getattr(sae, n).detach().cpu().clone() for n in names}
    normalize, metadata = c.normalize, {**c.metadata, **(extra_metadata or {})}
    if normalize == "expected_average_only_in":
        s = float(c.scaling_factor)
        weights["W_enc"], weights["W_dec"], weights["b_dec"] = weights["W_enc"] * s, weights["W_dec"] / s, weights["b_dec"] / s
        normalize, metadata["folded_input_scale"] = "none", s
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": c.d_in, "d_sae": c.d_sae, "dtype": c.dtype, "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input, "normalize_activations": normalize,
        "reshape_activations": "none",
        # sae_lens_version marks the 6.x config layout; without it SAELens reads the file as a pre-6.0 config
        "metadata": {**metadata, "hook_name": c.hook_name, "positions": c.positions,
                     "sae_lens_version": metadata.get("sae_lens_version", "6.0.0")},
    }
    if c.architecture == "topk":
        cfg["k"] = c.k
    save_file({n: w.contiguous() for n, w in weights.items()}, str(path / SAELENS_WEIGHTS))
    (path / SAELENS_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return path


# ------------------------------------------------------------------------------------------ the peer library


def peer_config(raw: Mapping[str, Any], where: str = "config.json") -> SAEConfig:
    """Map the peer library's (ViT-Prisma's) SAE config onto ``SAEConfig``."""
    hook = raw.get("hook_point")
    if not hook and raw.get("hook_point_layer") is not None:
        hook = f"blocks.{raw['hook_point_layer']}.{raw.get('layer_subtype', 'hook_resid_post')}"
    if not hook:
        raise SAEFormatError(f"{where}: no hook_point or hook_point_layer")
    _reject_head_index(raw, "hook_point_head_index")
    if raw.get("is_transcoder"):
        raise SAEFormatError(f"{where}: transcoders are not supported")
    act = raw.get("activation_fn_str", "relu")
    arch = raw.get("architecture", "standard")
    arch = "topk" if act == "topk" else arch
    if arch not in _ARCH_FROM_SAELENS:
        raise SAEFormatError(f"{where}: architecture {arch!r} is not supported (standard, topk, jumprelu)")
    if raw.get("cls_token_only") and raw.get("use_patches_only"):
        raise SAEFormatError(f"{where}: cls_token_only and use_patches_only are both set")
    positions = "cls" if raw.get("cls_token_only") else "patches" if raw.get("use_patches_only") else "all"

    def make() -> SAEConfig:
        d_in = int(raw["d_in"])
        d_sae = raw.get("d_sae") or d_in * int(raw["expansion_factor"])
        return SAEConfig(
            d_in=d_in, d_sae=int(d_sae), hook_name=str(hook), architecture=_ARCH_FROM_SAELENS[arch],
            k=(raw.get("activation_fn_kwargs") or {}).get("k"), normalize=raw.get("normalize_activations", "layer_norm"),
            apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)), dtype=_dtype_name(raw.get("dtype")),
            positions=positions, source="vit_prisma",
            metadata={"model_name": str(raw.get("model_name", ""))},
        )

    return _checked(make, where)


def load_peer(path: str | Path) -> SparseAutoencoder:
    """An SAE from the peer library's folder (config.json + one *.safetensors), read without importing it."""
    path = Path(path)
    cfg_file = path / PEER_CONFIG
    if not cfg_file.is_file():
        raise SAEFormatError(f"{path} is not a peer-format SAE folder: {PEER_CONFIG} is missing")
    tensors = sorted(path.glob("*.safetensors"))
    preferred = [t for t in tensors if t.name in ("weights.safetensors", "sae_weights.safetensors")]
    if preferred:
        tensors = preferred
    if not tensors:  # older checkpoints: a plain state dict in a .pt file, read with weights_only=True
        tensors = sorted(path.glob("*.pt"))
    if len(tensors) != 1:
        raise SAEFormatError(f"{path}: expected exactly one *.safetensors (or *.pt) weights file, found "
                             f"{[t.name for t in tensors]}")
    cfg = peer_config(json.loads(cfg_file.read_text()), str(cfg_file))
    return _build(cfg, _read_weights(tensors[0]), str(tensors[0]))


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        return load_file(str(file))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled objects other than tensors are refused by weights_only
        raise SAEFormatError(f"{file}: not a plain tensor state dict ({type(e).__name__}); save it as safetensors") from e
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SAEFormatError(f"{file}: expected a dict of tensors")
    return state


def load_sae(path: str | Path) -> SparseAutoencoder:
    """Either format, told apart by its config file (cfg.json: SAELens; config.json: the peer library)."""
    path = Path(path)
    if (path / SAELENS_CONFIG).is_file():
        return load_sae_lens(path)
    if (path / PEER_CONFIG).is_file():
        return load_peer(path)
    raise SAEFormatError(f"{path}: no {SAELENS_CONFIG} (SAELens) or {PEER_CONFIG} (peer library) found")


# ------------------------------------------------------------------------------------------ a live sae_lens.SAE


def from_sae_lens(sae: Any) -> SparseAutoencoder:
    """Convert a live ``sae_lens.SAE`` (from ``SAE.load_from_disk`` / ``from_pretrained``) through its config
    dict and state dict; the result runs without sae_lens. Needs ``pip install "vit_lens_clip[sae]"``."""
    try:
        import sae_lens  # noqa: F401  (optional extra)
    except ImportError as e:
        raise ImportError('from_sae_lens needs SAELens: pip install "vit_lens_clip[sae]"') from e
    raw = sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else dict(vars(sae.cfg))
    metadata = raw.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raw["metadata"] = metadata.__dict__ if hasattr(metadata, "__dict__") else dict(metadata)
    cfg = sae_lens_config(raw, f"sae_lens.{type(sae).__name__}")
    weights = {k: v.detach().cpu() for k, v in sae.state_dict().items()}
    return _build(cfg, weights, f"sae_lens.{type(sae).__name__}")
