"""The command line's arguments checked before anything heavy is imported or anything is created (docs/cli.md).

``check_arguments(args)`` runs in ``cli.main`` right after parsing and imports neither torch nor open_clip, so a
mistyped option, a missing path, an unknown model name or a device this machine lacks is reported in one line
in well under a second. It creates nothing: an ``--out`` that does not exist yet is only checked to be
creatable (its nearest existing parent is a folder this process can write into).

What it cannot know without loading (the model's own weights, a dataset's images, a pretrained tag's
availability online) is checked later by the command itself, still before its output folder is written.
"""

from __future__ import annotations

import argparse
import ctypes
import difflib
import importlib.util
import os
import re
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from vit_lens_clip.embedded import EMBEDDED_NAME
from vit_lens_clip.embedded.arguments import TRAIN_FRACTIONS, TRAIN_MINIMUM, TRAIN_POSITIVE
from vit_lens_clip.errors import BadInputError, OutputFolderError, UnknownModelError
from vit_lens_clip.options import check_ranges

_DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")
_BUILTIN_POOLS = ("descriptions", "words")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_TRUE = {"1", "on", "yes", "true"}
_SAE_CONFIGS = ("cfg.json", "config.json")  # methods/sae/formats.py's SAELENS_CONFIG, PEER_CONFIG (without torch)

# option -> smallest allowed value, per command (None: the option may be left out)
_MINIMUM: dict[str, dict[str, float]] = {
    "report": {"n_images": 1, "last_layers": 1, "k": 1, "batch_size": 1, "segmentation_images": 0,
               "spurious_images": 0, "neuron_images": 1, "seed": 0},
    "segment": {"limit": 1, "batch_size": 1, "examples": 0},
    "neurons": {"n_reference": 1, "n_eval": 1, "n_texts": 1, "segmentation_images": 0, "top_neurons": 1,
                "batch_size": 1, "seed": 0},
    "collect": {"seed": 0, "last_layers": 1, "batch_size": 1, "workers": 0, "shard_size": 1, "checkpoint_every": 1,
                "threads": 0, "profile_ranks": 0},
    "textspan": {"k": 1, "rank": 1},
    "bench": {"batch_size": 1, "repeats": 1, "threads": 1, "collect_images": 1},
    "train-embedded": TRAIN_MINIMUM,
}
_POSITIVE = {"bench": ("max_memory",), "train-embedded": TRAIN_POSITIVE}
_FRACTIONS = {"train-embedded": TRAIN_FRACTIONS}


def check_numbers(command: str, args: argparse.Namespace) -> None:
    """Every numeric option of ``command`` within its range."""
    check_ranges(args, _MINIMUM.get(command, {}), _POSITIVE.get(command, ()), _FRACTIONS.get(command, ()))


# ------------------------------------------------------------------------------------------ devices


@lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """GPUs the CUDA driver sees (honours CUDA_VISIBLE_DEVICES), asked through the driver library itself so that
    torch need not be imported; 0 without a driver."""
    for name in ("libcuda.so.1", "libcuda.so", "libcuda.dylib", "nvcuda.dll"):
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0
    count = ctypes.c_int(0)
    try:
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:
        return 0
    return int(count.value)


def check_device(value: Optional[str], option: str = "--device") -> None:
    """cpu, auto, mps, cuda or cuda:N, and a CUDA device this machine has."""
    if value is None:
        return
    if not _DEVICE.match(value):
        raise BadInputError(f"{option} {value!r} is not a device: use cpu, cuda, cuda:N or auto")
    if value.startswith("cuda"):
        n = cuda_device_count()
        index = int(value.split(":")[1]) if ":" in value else 0
        if n == 0:
            raise BadInputError(f"{option} {value}: no CUDA GPU is available on this machine (no driver or no "
                                "device visible); use --device cpu")
        if index >= n:
            raise BadInputError(f"{option} {value}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})")


# ------------------------------------------------------------------------------------------ models


def open_clip_model_names() -> tuple[str, ...]:
    """open_clip's architecture names, read from its packaged JSON configs without importing it (empty if absent)."""
    if "open_clip" in sys.modules:  # already loaded (a Python caller): its list holds configs added at run time,
        return tuple(sys.modules["open_clip"].list_models())  # so it is read anew each time, never cached
    return _packaged_model_names()


@lru_cache(maxsize=1)
def _packaged_model_names() -> tuple[str, ...]:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return ()
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return tuple(sorted(p.stem for p in folder.glob("*.json")))


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
                / "huggingface").expanduser()
    return home / "hub"


def _env_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _check_hub_repo(repo: str, written: str) -> None:
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise BadInputError(f"--model {written}: a hub repository is named OWNER/NAME")
    cached = _hub_cache() / f"models--{repo.replace('/', '--')}"
    if _env_offline() and not cached.is_dir():
        raise UnknownModelError(f"--model {written}: offline (HF_HUB_OFFLINE) and {repo} is not in the hub cache "
                                f"{_hub_cache()}; download it once online, or use local-dir:PATH")


def check_model_name(name: str, option: str = "--model") -> None:
    """The forms ``load_clip`` reads (docs/cli.md); an open_clip name must be one of its configs."""
    if not name or not name.strip():
        raise BadInputError(f"{option} must name a model")
    if name == EMBEDDED_NAME or name.startswith("timm:"):
        return  # timm's registry needs timm (and torch): checked when loading
    if name.startswith("local-dir:"):
        folder = Path(name.split(":", 1)[1]).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{option} {name}: no such folder {folder}")
        return
    if name.startswith("hf-hub:"):
        return _check_hub_repo(name.split(":", 1)[1], name)
    if name.startswith("hf:"):
        return _check_hub_repo(name.split(":", 1)[1], name)
    known = open_clip_model_names()
    if known and name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise UnknownModelError(f"{option}: unknown open_clip model {name!r}{hint}; see open_clip.list_models()")


def check_pretrained(value: Optional[str], model: Optional[str] = None) -> None:
    """A ``--pretrained`` that names a file (a path, or a weights suffix) must be one; a local-dir model (the
    embedded one included) takes none (open_clip would ignore it)."""
    if not value:
        return
    if model is not None and (model == EMBEDDED_NAME or model.startswith("local-dir:")):
        raise BadInputError(f"--pretrained {value} cannot apply to {model}: a local-dir model (the embedded one "
                            "included) loads the weights of its own folder; drop --pretrained, or give the "
                            "architecture's name with --pretrained FILE")
    looks_like_path = os.sep in value or "/" in value or value.lower().endswith(_WEIGHT_SUFFIXES)
    if looks_like_path and not Path(value).expanduser().is_file():
        raise FileNotFoundError(f"--pretrained {value}: no such weights file")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_tokenizer_folder(value: Optional[str], model: Optional[str] = None, option: str = "--tokenizer") -> None:
    """A ``--tokenizer`` is a folder holding a Hugging Face tokenizer (tokenizer.json or tokenizer_config.json, as
    AutoTokenizer.save_pretrained writes them), for an open_clip model (not timm: or hf:)."""
    if value is None:
        return
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{option} {value}: no such tokenizer folder")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise BadInputError(f"{option} {value} holds no tokenizer ({' or '.join(_TOKENIZER_FILES)}): give a folder "
                            "written by transformers' AutoTokenizer.save_pretrained")
    if model is not None and model.startswith(("timm:", "hf:")):
        raise BadInputError(f"{option} is for open_clip models; {model} is a {model.split(':')[0]} model "
                            "(timm: models have no text tower, hf: folders carry their own tokenizer)")


# ------------------------------------------------------------------------------------------ paths


def check_text_file(value: Optional[str], option: str, builtins: tuple[str, ...] = ()) -> None:
    """A built-in pool name, or a UTF-8 file with at least one non-blank line."""
    if value is None or value in builtins:
        return
    path = Path(value).expanduser()
    if not path.is_file():
        known = f" nor a built-in pool ({', '.join(builtins)})" if builtins else ""
        raise FileNotFoundError(f"{option} {value}: no such file{known}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError(f"{option} {value} is not UTF-8 (byte {e.start} cannot be decoded): save it as UTF-8, "
                            "one text a line") from None
    if not any(line.strip() for line in text.splitlines()):
        raise BadInputError(f"{option} {value} is empty: give one text per line")


def check_out_folder(value: Optional[str], option: str = "--out") -> None:
    """``value`` is a folder, or can be created: its nearest existing parent is a writable folder. Creates nothing
    that stays (writability is probed with a temporary file, removed at once)."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{option} {value} is a file, not a folder")
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputFolderError(f"cannot create {option} {value}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".vit_lens_clip-probe-")
    except OSError as e:
        raise OutputFolderError(f"{option} {value}: {existing} is not writable ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def check_file_parent(value: Optional[str], option: str) -> None:
    """A file to be written: its folder can be created and written."""
    if value:
        check_out_folder(str(Path(value).expanduser().parent), f"{option} {value}: its folder")


def check_sae_folder(value: Optional[str], option: str = "--sae") -> None:
    """An SAE folder: a SAELens (``cfg.json``) or peer-library (``config.json``) folder, checked before the report
    runs its other sections (it was read only when the SAE section's turn came)."""
    if value is None:
        return
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{option} {value}: no such folder (give a SAELens or ViT-Prisma SAE folder)")
    if not any((path / name).is_file() for name in _SAE_CONFIGS):
        raise BadInputError(f"{option} {value} holds no {' or '.join(_SAE_CONFIGS)}: not a SAELens or ViT-Prisma SAE "
                            "folder")


def check_data(spec: str, option: str = "--data") -> None:
    """``collect --data KIND:ARG``: a known kind and an existing path (shapes:N with N >= 1)."""
    kind, _, arg = spec.partition(":")
    kinds = ("shapes", "folder", "labelled", "imagenet-val", "wds")
    if kind not in kinds or not arg:
        raise BadInputError(f"{option} {spec!r} must be KIND:ARG with KIND one of {', '.join(kinds)}")
    if kind == "shapes":
        if not arg.isdigit() or int(arg) < 1:
            raise BadInputError(f"{option} shapes:N needs a number of scenes of at least 1, got {arg!r}")
    elif kind == "wds":
        paths = [arg] if Path(arg).is_dir() else arg.split(",")
        missing = [p for p in paths if not Path(p).expanduser().exists()]
        if missing:
            raise FileNotFoundError(f"{option} {spec}: no such shard or folder {missing[0]}")
    elif not Path(arg).expanduser().is_dir():
        raise FileNotFoundError(f"{option} {spec}: no such image folder {arg}")


def check_segment_dataset(words: list[str]) -> None:
    kind, rest = words[0], words[1:]
    if kind == "shapes":
        if rest:
            raise BadInputError("--dataset shapes takes no path")
        return
    if kind not in ("imagenet-seg", "folder") or len(rest) != 1:
        raise BadInputError("--dataset must be 'shapes', 'imagenet-seg PATH' or 'folder PATH'")
    path = Path(rest[0]).expanduser()
    if kind == "imagenet-seg" and not path.is_file():
        raise FileNotFoundError(f"--dataset imagenet-seg {rest[0]}: no such file")
    if kind == "folder":
        for sub in ("images", "masks"):
            if not (path / sub).is_dir():
                raise FileNotFoundError(f"--dataset folder {rest[0]}: no {path / sub} (layout: PATH/images, PATH/masks)")


# ------------------------------------------------------------------------------------------ per command


def check_arguments(args: argparse.Namespace) -> None:
    """Everything about the command line that can be checked without torch, in the order a user reads it."""
    command = args.command
    get: Any = lambda name: getattr(args, name, None)  # noqa: E731
    check_numbers(command, args)
    check_device(get("device"))
    if command in ("report", "hooks", "neurons", "collect", "segment") and get("model") is not None:
        if not (command == "hooks" and get("random")):
            check_model_name(args.model)
            check_pretrained(get("pretrained"), args.model)
    if get("tokenizer") is not None:
        check_tokenizer_folder(args.tokenizer, get("model"))
    if command == "bench":
        archs = args.arch.split(",") if get("suite") == "memory" else [args.arch]  # the memory suite takes a list
        for arch in archs:
            check_model_name(arch.strip(), "--arch")
        check_file_parent(get("json"), "--json")
    if command == "collect":
        check_data(args.data)
        if "scores" in [p.strip() for p in args.parts.split(",")] and not args.texts:
            raise BadInputError("the 'scores' part needs --texts POOL")
        check_text_file(get("texts"), "--texts", _BUILTIN_POOLS)
        check_out_folder(args.out)
    if command == "report":
        if get("images") and not Path(args.images).is_dir():
            raise FileNotFoundError(f"image folder not found: --images {args.images}")
        check_text_file(get("classes"), "--classes")
        if "textspan" not in (get("skip") or ()):
            check_text_file(get("texts"), "--texts", _BUILTIN_POOLS)
        if "sae" not in (get("skip") or ()):
            check_sae_folder(get("sae"))
        check_out_folder(args.out)
    if command == "segment":
        check_segment_dataset(list(args.dataset))
        check_text_file(get("classes"), "--classes")
        check_out_folder(args.out)
    if command == "neurons":
        for pool in args.pools or ():
            check_text_file(pool, "--pools", _BUILTIN_POOLS)
        check_out_folder(args.out)
    if command == "textspan":
        if not (Path(args.source) / "collection.json").is_file():
            raise FileNotFoundError(f"--from {args.source} is not a collection folder (no collection.json); run "
                                    "`vit-lens-clip collect` first")
        check_text_file(get("pool"), "--pool", _BUILTIN_POOLS)
        check_out_folder(get("out"))
    if command == "train-embedded":
        check_out_folder(str(args.out))
