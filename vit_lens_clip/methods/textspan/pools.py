"""Text pools for TextSpan and a disk cache for their embeddings.

Built-in pools (regenerate with ``python -m vit_lens_clip.methods.textspan.make_pools``):

* ``"descriptions"``: a few thousand short image descriptions written from this package's own vocabularies;
* ``"words"``: the 3,500 most common alphabetic English words (wordfreq).

Any other name is read as a path to a UTF-8 file with one text per line.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

POOL_DIR = Path(__file__).parent / "pools"
BUILTIN_POOLS = {"descriptions": POOL_DIR / "descriptions.txt", "words": POOL_DIR / "words.txt"}
CACHE_ENV_VAR = "VIT_LENS_CLIP_CACHE"


def load_pool(name_or_path: str | Path) -> list[str]:
    """Texts of a built-in pool ("descriptions", "words") or of a file with one text per line.

    Lines are stripped; blank lines and exact duplicates (after stripping) are dropped; order is kept.
    """
    key = str(name_or_path)
    path = BUILTIN_POOLS.get(key, Path(key).expanduser())
    if not path.is_file():
        raise ValueError(
            f"text pool {key!r} is neither a built-in pool ({', '.join(BUILTIN_POOLS)}) nor an existing file"
        )
    texts = list(dict.fromkeys(line.strip() for line in path.read_text(encoding="utf-8").splitlines()))
    texts = [text for text in texts if text]
    if not texts:
        raise ValueError(f"text pool file {path} holds no texts (only blank lines)")
    return texts


def default_cache_dir() -> Path:
    """``$VIT_LENS_CLIP_CACHE/text_embeddings`` if the variable is set, else ``~/.cache/vit_lens_clip/text_embeddings``."""
    root = os.environ.get(CACHE_ENV_VAR)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "vit_lens_clip"
    return base / "text_embeddings"


def cache_key(texts: Sequence[str], model_key: str) -> str:
    """sha256 over the model key and the exact ordered list of texts."""
    payload = json.dumps({"model_key": model_key, "texts": list(texts)}, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def embed_texts_cached(
    texts: Sequence[str],
    encode: Callable[[list[str]], Tensor],
    model_key: str,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> Float[Tensor, "n_texts d_out"]:
    """Embed ``texts`` with ``encode`` in batches, caching the result on disk.

    ``encode`` maps a list of strings to a [batch, d_out] tensor (normalise inside it if unit embeddings are
    wanted). ``model_key`` must identify the model and everything else that changes the embeddings (for
    example the template and normalisation); the cache file is ``<cache_dir>/<sha256>.safetensors`` keyed by
    (model_key, texts) and is written atomically. The result is returned on the CPU. ``progress``: a progress bar
    while embedding (a command's ``--quiet`` turns it off).
    """
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / f"{cache_key(texts, model_key)}.safetensors"
    if path.is_file():
        try:
            embeddings = load_file(str(path))["embeddings"]
        except (OSError, KeyError, SafetensorError):  # an unreadable cache file is rebuilt below
            embeddings = None
        if embeddings is not None and embeddings.shape[0] == len(texts) and bool(torch.isfinite(embeddings).all()):
            return embeddings  # (a damaged cache file, e.g. NaN bits, is rebuilt)

    batches = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embedding texts", unit="batch", disable=not progress):
        batch = texts[start : start + batch_size]
        with torch.no_grad():
            out = encode(batch)
        if out.ndim != 2 or out.shape[0] != len(batch):
            raise ValueError(f"encode returned shape {tuple(out.shape)} for a batch of {len(batch)} texts")
        batches.append(out.detach().to("cpu"))
    embeddings = torch.cat(batches).contiguous()

    directory.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".safetensors")
    os.close(handle)
    try:
        save_file({"embeddings": embeddings}, tmp_name, metadata={"model_key": model_key, "n_texts": str(len(texts))})
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return embeddings
