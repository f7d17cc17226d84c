"""The one family registry: which image towers HookedViT ports, how a ``load_clip`` name is read, and how a family
is recognised, from the built source module or from its config before anything is built or downloaded.

A family is one converter module plus one ``TowerFamily`` entry in ``FAMILIES``: the library that builds it
(``source``), the line ``UnsupportedTowerError`` lists, a detection from the built module (``is_tower``), the
converter, and a detection from the config (``claims_timm_name`` / ``claims_open_clip_config``). Everything else
(``load_clip``, ``HookedViT.from_*``, the refusals) goes through the functions below:

    parse_name(name)            "timm:…", "hf:…", "local-dir:…", "hf-hub:…", open_clip names, the embedded model
    check_name(model_name)      the family from the config alone (or an UnsupportedTowerError / UnknownModelError)
    check_timm_name, check_open_clip_name   the same for one library's names
    family_of(tower, source)    the family of a built module
    convert_tower(tower, …)     (ViTConfig, state dict) through that family's converter

A converter raises ``UnsupportedTowerError`` naming only its tower and the reason; the functions here add the
supported families to the message, so the list is written once, in the entries.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import open_clip
import timm
from torch import Tensor, nn

from vit_lens_clip.convert.common import unsupported_tower
from vit_lens_clip.convert.eva02 import convert_eva02, is_eva02, is_eva02_name
from vit_lens_clip.convert.hf import convert_hf, is_hf_clip_vision
from vit_lens_clip.convert.open_clip import (
    convert_open_clip,
    fold_timm_head,
    image_tower,
    is_open_clip_timm_tower,
    is_open_clip_vit,
)
from vit_lens_clip.convert.pe_core import convert_pe_core, is_pe_core, is_pe_core_name
from vit_lens_clip.convert.suggestions import did_you_mean, nearest
from vit_lens_clip.convert.timm import convert_timm, is_timm_vit
from vit_lens_clip.embedded import EMBEDDED_MODEL_DIR, EMBEDDED_NAME
from vit_lens_clip.errors import UnknownModelError, UnsupportedTowerError, UserInputError
from vit_lens_clip.model.config import ViTConfig

Converted = tuple[ViTConfig, dict[str, Tensor]]
SOURCES = ("open_clip", "timm", "hf")  # the libraries that build source models


def _never(*_) -> bool:
    return False


@dataclass(frozen=True)
class TowerFamily:
    """One family of image towers HookedViT represents exactly, and how it is recognised and converted.

    ``is_tower(module)``: the built module is this family's tower. ``convert(module, name)``: its (ViTConfig,
    state dict). ``claims_timm_name(timm_name, timm_module)`` / ``claims_open_clip_config(vision_cfg, name)``:
    the family recognised from a config before anything is built; they may raise UnsupportedTowerError with the
    reason a config of theirs cannot be ported.
    """

    name: str
    source: str
    line: str
    is_tower: Callable[[nn.Module], bool]
    convert: Callable[[nn.Module, Optional[str]], Converted]
    claims_timm_name: Callable[[str, str], bool] = _never
    claims_open_clip_config: Callable[[dict, str], bool] = _never


# ------------------------------------------------------------------------------------------- the entries
def _claims_open_clip_vit(vision: dict, name: str) -> bool:
    if vision.get("hf_model_name"):
        raise unsupported_tower(vision["hf_model_name"], f"open_clip {name!r}: transformers")
    if isinstance(vision.get("layers"), (list, tuple)):
        raise unsupported_tower("ModifiedResNet", f"open_clip {name!r}")
    return not vision.get("timm_model_name")


def _claims_open_clip_timm(vision: dict, name: str) -> bool:
    trunk = vision.get("timm_model_name")
    if not trunk:
        return False
    origin = f"open_clip {name!r}: timm"
    check_timm_name(trunk, origin=origin)
    if vision.get("timm_pool") not in ("map", "token", "avg", ""):
        raise unsupported_tower(trunk, origin, f"pool {vision.get('timm_pool')!r}")
    if vision.get("timm_proj") == "mlp":
        raise unsupported_tower(trunk, origin, "an MLP projection head")
    return True


def _convert_open_clip_timm(model: nn.Module, name: Optional[str]) -> Converted:
    visual = image_tower(model)
    return fold_timm_head(visual, *convert_tower(visual.trunk, name or "open_clip", source="timm"))


OPEN_CLIP_VIT = TowerFamily(
    name="open_clip",
    source="open_clip",
    line="open_clip VisionTransformer (OpenAI CLIP, LAION, DataComp, MetaCLIP, CLIPA, CoCa)",
    is_tower=lambda m: is_open_clip_vit(image_tower(m)),
    convert=lambda m, name: convert_open_clip(m, name=name or "open_clip"),
    claims_open_clip_config=_claims_open_clip_vit,
)
OPEN_CLIP_TIMM = TowerFamily(
    name="open_clip_timm",
    source="open_clip",
    line="open_clip timm ViT towers with a 'map' attention-pool head (SigLIP, SigLIP2, SO400M)",
    is_tower=lambda m: is_open_clip_timm_tower(image_tower(m)),
    convert=_convert_open_clip_timm,
    claims_open_clip_config=_claims_open_clip_timm,
)
TIMM_VIT = TowerFamily(
    name="timm",
    source="timm",
    line="timm VisionTransformer (class token or not, register tokens as in DINOv2, LayerScale, token/avg/map "
    "pooling, fc_norm, classifier head: DeiT, AugReg, DINOv2)",
    is_tower=is_timm_vit,
    convert=convert_timm,
    claims_timm_name=lambda timm_name, module: module in ("vision_transformer", "deit"),  # distilled DeiT: refused when built
)
HF_CLIP = TowerFamily(
    name="hf",
    source="hf",
    line="transformers CLIPVisionModelWithProjection / CLIPModel",
    is_tower=is_hf_clip_vision,
    convert=lambda m, name: convert_hf(m),
)
EVA02 = TowerFamily(
    name="eva02",
    source="timm",
    line="EVA02 (open_clip EVA02-*, timm eva02_*: rotary attention, a sub-LayerNorm on the heads, SwiGLU)",
    is_tower=is_eva02,
    convert=convert_eva02,
    claims_timm_name=lambda timm_name, module: module == "eva" and is_eva02_name(timm_name),
)
PE_CORE = TowerFamily(
    name="pe_core",
    source="timm",
    line="Perception Encoder (open_clip PE-Core-*, timm vit_pe_core_*: rotary attention, MAP head)",
    is_tower=lambda m: is_pe_core(m) and not is_eva02(m),
    convert=convert_pe_core,
    claims_timm_name=lambda timm_name, module: module == "eva" and is_pe_core_name(timm_name),
)

FAMILIES: tuple[TowerFamily, ...] = (OPEN_CLIP_VIT, OPEN_CLIP_TIMM, TIMM_VIT, HF_CLIP, EVA02, PE_CORE)

# timm modules whose towers are refused from the name alone, with the reason (no family claims them)
REFUSED_TIMM_MODULES = {
    "eva": "only EVA02 (eva02_*) and PE-Core (vit_pe_core_*) towers of timm's eva module are ported; EVA (v1) and "
    "the other rotary ViTs there are not checked for exactness",
}


def supported_families() -> str:
    """The family lines, as UnsupportedTowerError lists them."""
    return "; ".join(family.line for family in FAMILIES)


@contextmanager
def _listing_families() -> Iterator[None]:
    """An UnsupportedTowerError raised inside leaves with the supported families appended (once)."""
    try:
        yield
    except UnsupportedTowerError as error:
        if "; supported: " not in str(error):
            error.args = (f"{error}; supported: {supported_families()}",)
        raise


# ------------------------------------------------------------------------------------------- names
@dataclass(frozen=True)
class ModelName:
    """A ``load_clip`` name, read: ``source`` builds it from ``identifier``; ``name`` is what the user wrote
    (it names the model and keys its caches); ``schema`` is open_clip's "local-dir" / "hf-hub" or ""."""

    source: str
    identifier: str
    name: str
    schema: str = ""

    @property
    def local_dir(self) -> Optional[Path]:
        """The folder of a ``local-dir:`` name (the embedded model's included)."""
        return Path(self.identifier.split(":", 1)[1]) if self.schema == "local-dir" else None


_PREFIXES = {"timm:": "timm", "hf:": "hf"}  # stripped: the rest is the library's own name
_OPEN_CLIP_SCHEMAS = ("local-dir", "hf-hub")  # kept: open_clip's factory reads them


def parse_name(name: str) -> ModelName:
    """Read a ``load_clip`` name (see ``vit_lens_clip.loading``); nothing is looked up or fetched."""
    if not isinstance(name, str) or not name.strip():
        raise UserInputError(f"a model name must be a non-empty string, got {name!r}")
    if name == EMBEDDED_NAME:
        return ModelName("open_clip", f"local-dir:{EMBEDDED_MODEL_DIR}", EMBEDDED_NAME, "local-dir")
    for prefix, source in _PREFIXES.items():
        if name.startswith(prefix):
            if not name[len(prefix):]:
                raise UserInputError(f"{name!r} names no model after {prefix!r}")
            return ModelName(source, name[len(prefix):], name)
    schema = name.split(":", 1)[0] if ":" in name else ""
    if schema in _OPEN_CLIP_SCHEMAS:
        return ModelName("open_clip", name, name, schema)
    return ModelName("open_clip", name, name)


def check_name(model_name: ModelName) -> Optional[TowerFamily]:
    """The family of a parsed name from its config alone (None for open_clip's local-dir:/hf-hub: folders and
    transformers names, checked on the built module); unknown or unsupported names raise at once."""
    if model_name.source == "timm":
        return check_timm_name(model_name.identifier)
    if model_name.source == "open_clip" and not model_name.schema:
        return check_open_clip_name(model_name.identifier)
    return None


def _timm_module(timm_name: str) -> str:
    return timm.models.model_entrypoint(timm_name).__module__.rsplit(".", 1)[-1]


def check_timm_name(timm_name: str, origin: str = "timm") -> TowerFamily:
    """The family timm builds ``timm_name`` as, from timm's registry; UnsupportedTowerError for any other tower."""
    if not timm.is_model(timm_name):
        raise UnknownModelError(f"unknown timm model {timm_name!r}"
                                f"{did_you_mean(nearest(timm_name, timm.list_models()))}; see timm.list_models()")
    module = _timm_module(timm_name)
    with _listing_families():
        for family in FAMILIES:
            if family.claims_timm_name(timm_name, module):
                return family
        raise unsupported_tower(f"{timm_name} (timm.models.{module})", origin, REFUSED_TIMM_MODULES.get(module, ""))


def check_open_clip_name(name: str) -> TowerFamily:
    """The family of an open_clip model name from its JSON config (nothing built); UnknownModelError with the
    nearest names for a name open_clip does not know (a timm or transformers name: how to write it)."""
    config = open_clip.get_model_config(name)
    if config is None:
        raise UnknownModelError(f"unknown open_clip model {name!r}{_name_advice(name)}; see open_clip.list_models()")
    vision = config.get("vision_cfg", {})
    with _listing_families():
        for family in FAMILIES:
            if family.source == "open_clip" and family.claims_open_clip_config(vision, name):
                return family
        raise unsupported_tower(str(vision.get("timm_model_name") or name), f"open_clip {name!r}")


def _name_advice(name: str) -> str:
    if timm.is_model(name):
        return f" (did you mean 'timm:{name}'? timm models are named with the timm: prefix)"
    suggestions = nearest(name, open_clip.list_models())
    if not suggestions and name.count("/") == 1 and not name.startswith("/"):
        return f" (did you mean 'hf:{name}' or 'hf-hub:{name}'?)"
    return did_you_mean(suggestions)


def check_pretrained_tag(name: str, tag: str) -> None:
    """UnknownModelError, with the nearest tags, unless ``tag`` is one of open_clip's tags for ``name``."""
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        raise UnknownModelError(f"{tag!r} is neither a file nor a pretrained tag of {name}"
                                f"{did_you_mean(nearest(tag, tags))}; tags: {tags}")


def check_timm_tag(timm_name: str, tag: str) -> None:
    """UnknownModelError, with the nearest tags, unless timm has pretrained weights ``timm_name.tag``."""
    tags = [full.split(".", 1)[1] for full in timm.list_pretrained(f"{timm_name}.*")]
    if tag not in tags:
        raise UnknownModelError(f"{tag!r} is neither a file nor a pretrained tag of timm:{timm_name}"
                                f"{did_you_mean(nearest(tag, tags))}; tags: {tags}")


# ------------------------------------------------------------------------------------------- built modules
def family_of(tower: nn.Module, source: Optional[str] = None) -> TowerFamily:
    """The family of a built source module (of one library when ``source`` is given)."""
    with _listing_families():
        for family in FAMILIES:
            if (source is None or family.source == source) and family.is_tower(tower):
                return family
        visual = image_tower(tower)  # a CLIP names its image tower
        raise unsupported_tower(f"{type(visual).__name__} ({type(visual).__module__})", source or "source")


def convert_tower(tower: nn.Module, name: Optional[str] = None, source: Optional[str] = None) -> Converted:
    """(ViTConfig, state dict) of a built image tower through its family's converter; ``HookedViT.from_converted``
    builds the model. ``name`` becomes ``cfg.model_name`` (each converter has its default)."""
    family = family_of(tower, source)
    with _listing_families():
        return family.convert(tower, name)
