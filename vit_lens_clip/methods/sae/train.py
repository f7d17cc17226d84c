"""A minimal TopK SAE trainer for one hook of a HookedViT, and the SAE's reconstruction figures.

Why not SAELens' trainer: SAELens 6.x requires transformer_lens < 4 (this package runs on 4.x too) and its
training runner reads activations from a language model; its lower-level ``SAETrainer`` can take any
iterator of activation batches, but importing it at all forces the transformer_lens downgrade. So this is a
short, self-contained trainer (about 60 lines) in the style of Gao et al. (2024):

- activations x at every token position of the caller's images, scaled by one constant s = √d_in / E‖x‖
  ("expected_average_only_in");
- TopK activation (k features per token), b_dec initialised to the mean, W_enc = W_decᵀ at init, decoder rows
  kept at unit norm, Adam, loss ‖x − x̂‖² / ‖x − mean‖² plus the AuxK loss (the k_aux largest dead
  features reconstruct the residual error; weight 1/32) so that fewer features die.

Figures (``reconstruction_figures``): explained variance 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², mean L0, dead features
(never active on the held-out set); ``zero_shot_with_sae``: the zero-shot accuracy of each of the caller's
tasks with the SAE spliced (without the error term) next to the plain model's. The shipped SAE's training on
the shapes world is ``python -m vit_lens_clip.app.shipped_sae train``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vit_lens_clip.methods.sae.sae import SAEConfig, SparseAutoencoder
from vit_lens_clip.methods.sae.splice import saes_spliced
from vit_lens_clip.methods.zeroshot import build_classifier


@torch.no_grad()
def collect_activations(model, images: Tensor, hook: str, batch_size: int = 200,
                        progress: bool = True) -> Float[Tensor, "n pos d"]:
    """The activation at ``hook`` for every image and token position."""
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=f"activations at {hook}", disable=not progress):
        _, cache = model.run_with_cache(images[i:i + batch_size], names_filter=lambda n: n == hook)
        out.append(cache[hook].float())
    return torch.cat(out)


def _aux_loss(sae: SparseAutoencoder, pre: Tensor, residual: Tensor, dead: Tensor, k_aux: int) -> Tensor:
    """AuxK: the k_aux largest pre-activations among dead features reconstruct the error x − x̂."""
    if not bool(dead.any()):
        return pre.new_zeros(())
    masked = pre.masked_fill(~dead, float("-inf"))
    top = masked.topk(min(k_aux, int(dead.sum())), dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    return (acts @ sae.W_dec - residual).pow(2).sum(-1).mean() / residual.pow(2).sum(-1).mean().clamp(min=1e-8)


def train_topk_sae(acts: Float[Tensor, "n d"], hook: str, d_sae: int, k: int, steps: int = 3000,
                   batch_size: int = 4096, lr: float = 1e-3, seed: int = 0, dead_after: int = 50_000,
                   progress: bool = True) -> tuple[SparseAutoencoder, list[float]]:
    """Train a TopK SAE on rows of ``acts`` (see the module docstring); returns it and the loss curve."""
    g = torch.Generator().manual_seed(seed)
    d_in = acts.shape[-1]
    scale = float(d_in**0.5 / acts.norm(dim=-1).mean())
    x_all = acts * scale
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, hook_name=hook, architecture="topk", k=k,
                    normalize="expected_average_only_in", scaling_factor=scale, apply_b_dec_to_input=True)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        W = torch.randn(d_sae, d_in, generator=g)
        sae.W_dec.copy_(W / W.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(x_all.mean(0))
    params = [sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec]
    opt = torch.optim.Adam(params, lr=lr)
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    variance = (x_all - x_all.mean(0)).pow(2).sum(-1).mean()
    losses = []
    for step in tqdm(range(steps), desc="training the SAE", disable=not progress):
        x = x_all[torch.randint(0, len(x_all), (batch_size,), generator=g)]
        pre = sae.pre_acts(x)
        f = sae.activation(pre)
        recons = f @ sae.W_dec + sae.b_dec
        mse = (recons - x).pow(2).sum(-1).mean() / variance
        since_fired += batch_size
        since_fired[(f > 0).any(0)] = 0
        aux = _aux_loss(sae, pre, (x - recons).detach(), since_fired > dead_after, 4 * k)
        loss = mse + aux / 32
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
        for group in opt.param_groups:  # linear decay over the last fifth
            group["lr"] = lr * min(1.0, 5 * (steps - step) / steps)
        losses.append(float(mse.detach()))
    return sae, losses


@torch.no_grad()
def reconstruction_figures(sae: SparseAutoencoder, acts: Float[Tensor, "n d"], batch_size: int = 8192) -> dict:
    """Explained variance, mean L0 and dead features of ``sae`` on rows of ``acts`` (held out)."""
    err, fired, l0 = 0.0, torch.zeros(sae.cfg.d_sae, dtype=torch.bool), 0.0
    for i in range(0, len(acts), batch_size):
        x = acts[i:i + batch_size]
        f = sae.encode(x)
        err += float((sae.decode(f) - x).pow(2).sum())
        fired |= (f > 0).any(0)
        l0 += float((f > 0).sum())
    total = float((acts - acts.mean(0)).pow(2).sum())
    return {"explained_variance": 1 - err / total, "l0": l0 / len(acts), "dead_features": int((~fired).sum()),
            "dead_fraction": float((~fired).float().mean()), "n_tokens": len(acts)}


@torch.no_grad()
def zero_shot_with_sae(loaded, sae: SparseAutoencoder, images: Float[Tensor, "n channel height width"],
                       labels: Mapping[str, Sequence[Optional[int]]],
                       classes: Mapping[str, tuple[Sequence[str], Sequence[Callable[[str], str]]]],
                       batch_size: int = 200) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy per task, plain and with the SAE spliced (no error term), on the same images.

    ``labels[task]``: each image's class index (None where the task is undefined for it); ``classes[task]``:
    its class names and prompt templates."""
    def embed() -> Tensor:
        return torch.cat([loaded.model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    plain = torch.nn.functional.normalize(embed().float(), dim=-1)
    with saes_spliced(loaded.model, sae, use_error_term=False):
        spliced = torch.nn.functional.normalize(embed().float(), dim=-1)
    out: dict[str, dict[str, float]] = {}
    for task, task_labels in labels.items():
        idx = [i for i, label in enumerate(task_labels) if label is not None]
        target = torch.tensor([task_labels[i] for i in idx])
        names, templates = classes[task]
        W = build_classifier(loaded, list(names), list(templates))
        acc = lambda e, idx=idx, W=W, target=target: float(((e[idx] @ W).argmax(-1) == target).float().mean())
        out[task] = {"plain": acc(plain), "sae": acc(spliced), "n": len(idx)}
    return out
