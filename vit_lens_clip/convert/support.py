"""Which vision towers HookedViT represents exactly, and the error for everything else.

``check_open_clip_name`` / ``check_timm_name`` decide from the model's config alone (open_clip's JSON config,
timm's registry), so an unsupported model fails at once, before any weights are built or downloaded.
"""

from __future__ import annotations

import open_clip
import timm

from vit_lens_clip.errors import UserInputError

SUPPORTED_FAMILIES = (
    "open_clip VisionTransformer (OpenAI CLIP, LAION, DataComp, MetaCLIP, CLIPA, CoCa)",
    "open_clip timm ViT towers with a 'map' attention-pool head (SigLIP, SigLIP2, SO400M)",
    "timm VisionTransformer (class token or not, register tokens as in DINOv2, LayerScale, token/avg/map pooling, "
    "fc_norm, classifier head: DeiT, AugReg, DINOv2)",
    "transformers CLIPVisionModelWithProjection / CLIPModel",
    "Perception Encoder (open_clip PE-Core-*, timm vit_pe_core_*: rotary attention, MAP head)",
)

# timm modules whose towers are not softmax(qkᵀ)v with plain additive position embeddings.
_NOT_EXACT = {
    "eva": "EVA02 towers put a sub-LayerNorm on the attention output, which mixes the heads before W_O, and use "
    "SwiGLU MLPs; per-head results would not be exact, so no port is attempted (PE-Core's rotary towers are "
    "ported)",
}


class UnsupportedTowerError(UserInputError, ValueError):
    """The vision tower is not a ViT that HookedViT can represent exactly."""


def unsupported(tower: str, origin: str, why: str = "") -> UnsupportedTowerError:
    """An UnsupportedTowerError naming the tower class, its origin and the supported families."""
    reason = f" ({why})" if why else ""
    return UnsupportedTowerError(
        f"{origin} image tower {tower} is not supported{reason}; supported: " + "; ".join(SUPPORTED_FAMILIES)
    )


def check_timm_name(model_name: str, origin: str = "timm") -> None:
    """Raise UnsupportedTowerError unless timm builds ``model_name`` with its VisionTransformer class."""
    if not timm.is_model(model_name):
        raise UserInputError(f"unknown timm model {model_name!r}; see timm.list_models()")
    module = timm.models.model_entrypoint(model_name).__module__.rsplit(".", 1)[-1]
    if module in ("vision_transformer", "deit"):  # distilled DeiT (two prefix heads) is refused when built
        return
    if module == "eva" and model_name.startswith("vit_pe_core"):  # Perception Encoder: rotary, ported exactly
        return
    raise unsupported(f"{model_name} (timm.models.{module})", origin, _NOT_EXACT.get(module, ""))


def check_open_clip_name(name: str) -> None:
    """Raise UnsupportedTowerError for an open_clip model whose image tower cannot be ported (config only)."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        return  # hf-hub: / local-dir: schemas: checked on the built module instead
    vision = cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        check_timm_name(vision["timm_model_name"], origin=f"open_clip {name!r}: timm")
        if vision.get("timm_pool") not in ("map", "token", "avg", ""):
            raise unsupported(vision["timm_model_name"], f"open_clip {name!r}: timm", f"pool {vision.get('timm_pool')!r}")
        if vision.get("timm_proj") == "mlp":
            raise unsupported(vision["timm_model_name"], f"open_clip {name!r}: timm", "an MLP projection head")
        return
    if vision.get("hf_model_name"):
        raise unsupported(vision["hf_model_name"], f"open_clip {name!r}: transformers")
    if isinstance(vision.get("layers"), (list, tuple)):
        raise unsupported("ModifiedResNet", f"open_clip {name!r}")
