"""The command line's options, and the settings of ``vit-lens-clip report`` as one frozen dataclass.

Light on purpose (no torch): the CLI builds its parser from this module, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

from vit_lens_clip.embedded import EMBEDDED_NAME

SECTION_NAMES: tuple[str, ...] = (
    "ablation", "textspan", "completeness", "heatmaps", "segmentation", "spurious", "attention", "neurons", "sae",
)
DEFAULT_QUERIES: tuple[str, ...] = (
    "a colour", "a shape", "a location in the image", "a place", "a number of objects",
)


def suggest_names(unknown: Sequence[str], known: Sequence[str]) -> str:
    """'' or "; did you mean 'x'?" for the closest known names (difflib)."""
    close = [c for name in unknown for c in difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)]
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def section_name(text: str) -> str:
    """A report section's name, for argparse: an unknown one is refused with the closest names."""
    if text not in SECTION_NAMES:
        raise argparse.ArgumentTypeError(f"unknown section {text!r}{suggest_names([text], SECTION_NAMES)} "
                                         f"(sections: {', '.join(SECTION_NAMES)})")
    return text


@dataclass(frozen=True)
class ReportConfig:
    """Every setting a report section may read (sections declare which ones they use)."""

    out: Path = Path("vit_lens_clip_report")
    model: str = EMBEDDED_NAME
    pretrained: Optional[str] = None
    tokenizer: Optional[str] = None
    device: str = "cpu"
    precision: str = "fp32"
    images: Optional[str] = None
    source: Optional[str] = None
    classes: Optional[str] = None
    texts: str = "descriptions"
    n_images: int = 500
    last_layers: int = 4
    k: int = 10
    batch_size: int = 64
    segmentation_images: int = 150
    spurious_images: int = 400
    spurious_bird_size: Optional[str] = None
    spurious_queries: Optional[tuple[str, ...]] = None
    neuron_images: Optional[int] = None
    sae: Optional[str] = None
    skip: tuple[str, ...] = ()
    queries: tuple[str, ...] = DEFAULT_QUERIES
    seed: int = 0
    quiet: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        # the annotations are what the fields hold; ``from_args`` converts the command line's values, and these
        # lines do the same for a str or list given from Python where no run-time checker rejects it first
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "skip", tuple(self.skip))
        object.__setattr__(self, "queries", tuple(self.queries))
        if self.spurious_queries is not None:
            object.__setattr__(self, "spurious_queries", tuple(self.spurious_queries))
        unknown = sorted(set(self.skip) - set(SECTION_NAMES))
        if unknown:
            raise ValueError(f"unknown sections to skip {unknown}{suggest_names(unknown, SECTION_NAMES)}; "
                             f"sections are {list(SECTION_NAMES)}")
        for name in ("n_images", "last_layers", "k", "batch_size", "segmentation_images", "spurious_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ReportConfig":
        """The config of a parsed ``report`` command line (attributes that are not settings are ignored)."""
        given = {f.name: vars(args)[f.name] for f in fields(cls) if f.name in vars(args)}
        if "out" in given:  # argparse gives a string and lists; the fields hold a Path and tuples
            given["out"] = Path(given["out"])
        for name in ("skip", "queries", "spurious_queries"):
            if given.get(name) is not None:
                given[name] = tuple(given[name])
        return cls(**given)


TOKENIZER_HELP = ("a local Hugging Face tokenizer folder (AutoTokenizer.save_pretrained) used instead of the model's "
                  "own; SigLIP's tokenizer comes from the model hub, so offline it must be given this way")


def add_tokenizer_argument(parser: argparse.ArgumentParser) -> None:
    """``--tokenizer FOLDER``: a local tokenizer for an open_clip model (``load_clip(..., tokenizer=FOLDER)``)."""
    parser.add_argument("--tokenizer", default=None, metavar="FOLDER", help=TOKENIZER_HELP)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--pretrained``, ``--tokenizer``, ``--device``, ``--precision``: which CLIP to load and where."""
    parser.add_argument("--model", default=EMBEDDED_NAME,
                        help="open_clip name (SigLIP too), timm:NAME (a timm ViT), local-dir:PATH, hf-hub:ID, hf:ID, "
                             "or the embedded default")
    parser.add_argument("--pretrained", default=None, help="pretrained tag or local .safetensors/.bin file "
                        "(omitted: random weights built from the config, no download)")
    add_tokenizer_argument(parser)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The ``report`` command's own options (the model options come from ``add_model_arguments``)."""
    p.add_argument("--out", default="vit_lens_clip_report", help="output folder")
    p.add_argument("--images", default=None, help="a folder of images (class sub-folders give labels)")
    p.add_argument("--from", dest="source", default=None, metavar="DIR",
                   help="a `vit-lens-clip collect` folder in place of a model + dataset: the model it names is "
                        "loaded for texts; sections that need images are skipped, each with its reason")
    p.add_argument("--classes", default=None,
                   help="class names, one per line: for unlabelled --images, or one per class folder (sorted) to rename them")
    p.add_argument("--texts", default="descriptions", help="TextSpan pool: descriptions, words, or a file")
    p.add_argument("--n-images", type=int, default=500, help="synthetic scenes when --images is not given")
    p.add_argument("--last-layers", type=int, default=4, help="layers whose heads TextSpan explains")
    p.add_argument("--k", type=int, default=10, help="TextSpan texts per head")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--segmentation-images", type=int, default=150)
    p.add_argument("--spurious-images", type=int, default=400)
    p.add_argument("--spurious-bird-size", default=None, choices=["small", "large"],
                   help="bird glyph size in the spurious-cue set (default: the training size, small)")
    p.add_argument("--spurious-queries", nargs="*", default=None,
                   help="texts that pick the role heads from their TextSpan texts (default: the shapes world's "
                        "place phrases, 'on water', 'on grass', ...)")
    p.add_argument("--neuron-images", type=int, default=None,
                   help="reference scenes of the neuron section (default 3 x --n-images; synthetic scenes only)")
    p.add_argument("--sae", default=None,
                   help="a SAELens or ViT-Prisma SAE folder for a hook of the model (default: the embedded model's "
                        "shipped SAE; other models skip the SAE section without one)")
    p.add_argument("--skip", nargs="*", default=[], type=section_name, metavar="SECTION",
                   help=f"sections to leave out: {', '.join(SECTION_NAMES)}")
    p.add_argument("--queries", nargs="*", default=list(DEFAULT_QUERIES),
                   help="texts for the 'which heads span this text' search")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="reuse a non-empty --out that is not a report of the same settings (removes only files a report wrote)")


# the segmentation methods of ``vit_lens_clip.methods.spatial`` (a test checks they match its registry)
SEGMENT_METHODS: tuple[str, ...] = ("decomposition", "raw_attention", "rollout", "gradcam", "chefer")


def add_segment_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``vit-lens-clip segment``."""
    parser.add_argument("--model", default=EMBEDDED_NAME, help="model name for load_clip")
    parser.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file")
    add_tokenizer_argument(parser)
    parser.add_argument("--dataset", nargs="+", default=["shapes"], metavar="KIND [PATH]",
                        help="'shapes' (built-in synthetic scenes), 'imagenet-seg PATH' (gtsegs_ijcv.mat) "
                             "or 'folder PATH' (root/images + root/masks)")
    parser.add_argument("--limit", type=int, default=None, help="score at most this many images "
                        "(shapes: number of scenes, default 200)")
    parser.add_argument("--out", default="segmentation_report", help="output folder")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=list(SEGMENT_METHODS), choices=list(SEGMENT_METHODS))
    parser.add_argument("--classes", default=None,
                        help="file with one class name per line (default: ImageNet classes; shapes: its shapes)")
    parser.add_argument("--templates", choices=("openai", "simple"), default="openai",
                        help="ImageNet prompt templates: open_clip's 80 (openai) or its 7 (simple)")
    parser.add_argument("--frame", choices=("model", "original"), default="model",
                        help="score in the model-input frame or on the original image")
    parser.add_argument("--examples", type=int, default=4, help="images shown in the HTML report")
    return parser


def add_neurons_arguments(p: argparse.ArgumentParser) -> None:
    """The ``neurons`` command's own options (the model options come from ``add_model_arguments``)."""
    p.add_argument("action", nargs="?", default="report", choices=["report", "collect", "describe", "ablate", "segment"],
                   help="report: everything as HTML/JSON; collect: save per-image statistics; describe: neuron texts; "
                        "ablate: the ablation table; segment: neuron vs head segmentation")
    p.add_argument("--layers", type=int, nargs="*", default=None, help="MLP layers (default: all but the last)")
    p.add_argument("--task", default="shape", help="shapes-world attribute for zero-shot accuracy")
    p.add_argument("--n-reference", type=int, default=2562, help="reference scenes (means, thresholds, directions)")
    p.add_argument("--n-eval", type=int, default=1000, help="evaluation scenes")
    p.add_argument("--pools", nargs="+", default=["descriptions", "words"], help="text pools (built-in names or files)")
    p.add_argument("--n-texts", type=int, default=32, help="texts per neuron (OMP atoms)")
    p.add_argument("--normalization", default="text", choices=["text", "dimension"],
                   help="pool scaling: per text (default) or per embedding dimension (the published code)")
    p.add_argument("--shares", action="store_true", help="give each neuron the official mean/bias shares")
    p.add_argument("--segmentation-images", type=int, default=150)
    p.add_argument("--top-neurons", type=int, default=200, help="neurons per class for segmentation")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="vit_lens_clip_neurons", help="output folder")
    p.add_argument("--quiet", action="store_true")


# the parts ``collect`` can store (a test checks they match vit_lens_clip.decompose.store.PART_FIELDS)
COLLECT_PARTS: tuple[str, ...] = ("heads", "layers", "mlps", "embed", "scores")


def add_collect_arguments(p: argparse.ArgumentParser) -> None:
    """The ``collect`` command's own options (the model options come from ``add_model_arguments``)."""
    p.add_argument("--data", required=True, help="shapes:N, folder:PATH, labelled:PATH, imagenet-val:PATH or wds:SHARDS")
    p.add_argument("--seed", type=int, default=0, help="seed of the shapes world")
    p.add_argument("--out", required=True, help="output folder (a killed run resumes when relaunched on it)")
    p.add_argument("--parts", default="heads,embed,means",
                   help=f"comma list of {', '.join(COLLECT_PARTS)}, means (default heads,embed,means)")
    p.add_argument("--last-layers", type=int, default=4, help="layers whose heads (and head-patch scores) are kept")
    p.add_argument("--texts", default=None, help="text pool (name or file) for the 'scores' part")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank")
    p.add_argument("--pin-memory", action="store_true", help="page-locked batches (default on with CUDA)")
    p.add_argument("--autocast", choices=["bf16", "fp16"], default=None, help="run the model under autocast")
    p.add_argument("--store", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="dtype of the stored parts (TextSpan keeps no direction below the stored precision's "
                        "rounding: fp32 for TextSpan, docs/textspan.md)")
    p.add_argument("--shard-size", type=int, default=4096, help="images per safetensors shard")
    p.add_argument("--checkpoint-every", type=int, default=50, help="batches between checkpoints")
    p.add_argument("--no-normalize", action="store_true", help="keep parts unscaled (default: divide by ‖y‖)")
    p.add_argument("--examples", type=int, default=0,
                   help="keep the top K dataset images of every unit (examples.safetensors; 0: none), see docs/explorer.md")
    p.add_argument("--example-units", default="heads",
                   help="with --examples: comma list of heads (share of each image's embedding), neurons:L[:L...] "
                        "(MLP neurons' max activation), sae (the shipped SAE's features) or sae:PATH")
    p.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: torch's default)")
    p.add_argument("--profile", action="store_true",
                   help="print collection vs plain encode_image throughput through the same DataLoader, then exit")
    p.add_argument("--profile-ranks", type=int, default=0,
                   help="with --profile: also time torchrun with this many ranks against one rank (1 thread each)")
    p.add_argument("--quiet", action="store_true")


def add_textspan_arguments(p: argparse.ArgumentParser) -> None:
    """The ``textspan --from DIR`` command's options."""
    p.add_argument("--from", dest="source", required=True, help="a folder written by `vit-lens-clip collect`")
    p.add_argument("--pool", default="descriptions", help="text pool: descriptions, words or a file (one text a line)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rank", type=int, default=80)
    p.add_argument("--out", default=None, help="output folder (default: FROM/textspan)")
    p.add_argument("--cache-dir", default=None, help="text-embedding cache folder")
    add_tokenizer_argument(p)
    p.add_argument("--device", default="cpu")
