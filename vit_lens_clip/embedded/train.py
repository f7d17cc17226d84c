"""Train the embedded default model: a small open_clip CLIP on the synthetic shapes world.

    python -m vit_lens_clip.embedded.train --out DIR [--steps 3400] [--seed 0] [--device cuda]

The model is built with open_clip's own ``CLIP`` class and trained with open_clip's ``ClipLoss`` (symmetric
InfoNCE over the batch), AdamW, linear warmup then cosine decay. Each batch is drawn from a numpy stream
seeded by (seed, step), so a resumed run sees exactly the batches an uninterrupted run would. On finish it
writes an open_clip "local-dir" folder (``open_clip_config.json`` + ``open_clip_model.safetensors`` in
float16) loadable with ``open_clip.create_model_and_transforms('local-dir:' + DIR)``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from vit_lens_clip.datasets.shapes_world import SWEEP_WEIGHTS, ShapesWorld, sweep_distribution
from vit_lens_clip.embedded.arguments import build_train_parser, check_train_numbers
from vit_lens_clip.embedded.config import CHECKPOINT_NAME, CONFIG_NAME, MODEL_CFG, PREPROCESS_CFG, WEIGHTS_NAME
from vit_lens_clip.embedded.evaluate import quick_report
from vit_lens_clip.errors import BadInputError, UserInputError
from vit_lens_clip.validation import check_output_folder


def sincos_2d(grid: int, width: int) -> torch.Tensor:
    """Fixed 2D sine-cosine table [1 + grid*grid, width] (zero row for the class token): half the channels
    encode the row, half the column, each as sin/cos at geometrically spaced frequencies."""
    quarter = width // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for coord in (rows.flatten(), cols.flatten()):
        angles = coord[:, None] * freqs[None, :]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), table]).float()


def build_model(seed: int, sincos_init: bool = True, pos_init_scale: float = 1.0) -> open_clip.CLIP:
    """A freshly initialised open_clip CLIP with ``MODEL_CFG`` (deterministic given ``seed``).

    With ``sincos_init`` the (still learnable) vision positional embedding starts from a 2D sine-cosine
    table instead of small noise, so where a patch sits is readable from the first step. The table's std is
    ``pos_init_scale`` times open_clip's own init scale (width^-1/2).
    """
    torch.manual_seed(seed)
    model = open_clip.CLIP(**MODEL_CFG)
    if sincos_init:
        pos = model.visual.positional_embedding
        grid = MODEL_CFG["vision_cfg"]["image_size"] // MODEL_CFG["vision_cfg"]["patch_size"]
        table = sincos_2d(grid, pos.shape[1])
        with torch.no_grad():
            pos.copy_(table * (pos_init_scale * pos.shape[1] ** -0.5) / table[1:].std())
    return model


def build_tokenizer() -> open_clip.SimpleTokenizer:
    return open_clip.SimpleTokenizer(context_length=MODEL_CFG["text_cfg"]["context_length"])


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] images -> normalised float [B, 3, H, W], identical to the eval transform at 64 px."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(PREPROCESS_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESS_CFG["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(progress, 1.0)))


def batch_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, 7919])


def export_local_dir(model: open_clip.CLIP, out: Path, extra: dict | None = None) -> None:
    """Write ``open_clip_config.json`` and float16 ``open_clip_model.safetensors`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    if extra:
        config["training"] = extra
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    config["weights_sha256"] = hashlib.sha256((out / WEIGHTS_NAME).read_bytes()).hexdigest()  # verified at load
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))


def train(
    out: Path,
    steps: int,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int = 100,
    device: str = "cpu",
    threads: int = 2,
    log_every: int = 50,
    checkpoint_every: int = 250,
    eval_every: int = 0,
    group_size: int = 4,
    bird_fraction: float = 0.2,
    sweep_fraction: float = 0.6,
    max_minutes: float | None = None,
    sincos_init: bool = True,
    stop_at: int | None = None,
    pos_init_scale: float = 1.0,
    sweep_weights: dict[str, float] | None = None,
) -> open_clip.CLIP:
    """Train (resuming from ``out/checkpoint.pt`` when present) and export the local-dir folder.

    ``max_minutes`` is a wall-clock safety net: past it, training stops early, and the export records the
    number of steps actually taken (``steps_done``) next to the planned schedule length (``steps``).
    """
    if steps <= 0:
        raise ValueError("steps must be positive")
    sweep_weights = dict(SWEEP_WEIGHTS if sweep_weights is None else sweep_weights)
    sweep_distribution(sweep_weights)  # bad weights fail here, before anything is built or written
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(seed, sincos_init, pos_init_scale).to(device)
    tokenizer = build_tokenizer()
    world = ShapesWorld(image_size=MODEL_CFG["vision_cfg"]["image_size"], seed=seed)
    loss_fn = open_clip.ClipLoss()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name or "embedding" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98), eps=1e-6,
    )
    start, elapsed = 0, 0.0
    steps_done = 0
    ckpt_path = out / CHECKPOINT_NAME
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, elapsed = int(ckpt["step"]), float(ckpt["elapsed"])
        steps_done = start
        print(f"resumed from {ckpt_path} at step {start}", flush=True)

    def save(step: int) -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": elapsed}, tmp)
        tmp.replace(ckpt_path)

    model.train()
    running = []
    t0 = session_start = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train", mininterval=20)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        scenes = world.training_batch(batch_rng(seed, step), batch_size, group_size, bird_fraction,
                                      sweep_fraction, sweep_weights)
        images = images_to_tensor([s.image for s in scenes]).to(device)
        texts = tokenizer([s.caption for s in scenes]).to(device)
        image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running.append(loss.item())
        now = time.time()
        elapsed += now - t0
        t0 = now
        if (step + 1) % log_every == 0:
            mean_loss = float(np.mean(running[-log_every:]))
            bar.set_postfix(loss=f"{mean_loss:.3f}")
            print(f"step {step + 1}/{steps} loss {mean_loss:.4f} lr {lr_at(step, steps, lr, warmup):.2e} "
                  f"scale {model.logit_scale.exp().item():.1f} {(now - session_start) / (step + 1 - start):.3f}s/step",
                  flush=True)
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            model.eval()
            print(quick_report(model, tokenizer, device=device), flush=True)
            model.train()
            t0 = time.time()
        steps_done = step + 1
        out_of_time = max_minutes is not None and now - session_start > 60 * max_minutes
        if stop_at is not None and steps_done >= stop_at:
            save(steps_done)
            print(f"stopping at step {steps_done} (--stop-at); resume with the same --out", flush=True)
            return model
        if steps_done % checkpoint_every == 0 or steps_done == steps or out_of_time:
            save(steps_done)
        if out_of_time:
            print(f"stopping early at step {steps_done}/{steps}: max_minutes={max_minutes} reached", flush=True)
            break
    model.eval()
    info = {"steps": steps, "steps_done": steps_done, "seed": seed, "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay,
            "warmup": warmup, "group_size": group_size, "bird_fraction": bird_fraction,
            "sweep_fraction": sweep_fraction, "sweep_weights": sweep_weights, "sincos_pos_init": sincos_init,
            "pos_init_scale": pos_init_scale,
            "train_seconds": round(elapsed, 1)}
    export_local_dir(model, out, info)
    print(f"exported {out / WEIGHTS_NAME} after {steps_done} steps ({elapsed / 60:.1f} min)", flush=True)
    return model


def check_train_arguments(args: argparse.Namespace) -> None:
    """The trainer's options in range and its device present (one-line ``BadInputError``), before any work; the
    same ranges ``vit-lens-clip train-embedded`` checks before torch is imported (``embedded.arguments``)."""
    check_train_numbers(args)
    device = str(args.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"--device {device}: no CUDA GPU is available on this machine; use --device cpu")
    try:
        torch.device("cpu" if device == "auto" else device)
    except RuntimeError:
        raise BadInputError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    check_output_folder(args.out, "--out")


def train_from_args(args: argparse.Namespace) -> open_clip.CLIP:
    """``train`` with the options of ``embedded.arguments.add_train_arguments`` (both command lines)."""
    check_train_arguments(args)
    return train(args.out, args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                 weight_decay=args.weight_decay, warmup=args.warmup, device=args.device, threads=args.threads,
                 log_every=args.log_every, checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                 group_size=args.group_size, bird_fraction=args.bird_fraction, sweep_fraction=args.sweep_fraction,
                 max_minutes=args.max_minutes, sincos_init=not args.no_sincos_init, stop_at=args.stop_at,
                 pos_init_scale=args.pos_init_scale, sweep_weights=args.sweep_weights)


def main(argv: list[str] | None = None) -> None:
    parser = build_train_parser()
    args = parser.parse_args(argv)
    try:
        check_train_arguments(args)
    except (UserInputError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")  # one line, status 2, as ``vit-lens-clip train-embedded``
    train_from_args(args)


if __name__ == "__main__":
    main()
