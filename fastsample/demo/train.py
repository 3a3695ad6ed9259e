"""Train the three shipped demo models on the 16x16 digits (``python -m fastsample.demo.train``).

Usage: ``python -m fastsample.demo.train [--which ddpm|flow|classifier|all] [--out DIR]``.
Writes ``DIR/{ddpm,flow,classifier}/`` (default: the package's ``fastsample/demo/weights``).

- ddpm: ``UNet2DModel`` epsilon prediction (Ho et al., arXiv 2006.11239), ``DDPMScheduler`` with
  1000 linear betas, saved as a ``DDPMPipeline``.
- flow: the same UNet trained on x_t = (1 - t) x0 + t eps with target v = eps - x0 and timestep
  label 1000 t, t ~ U(0, 1) (Liu et al., arXiv 2209.03003), saved as a
  :class:`~fastsample.pipelines.RectifiedFlowPipeline` with ``FlowMatchEulerDiscreteScheduler``
  (shift 1.0).
- classifier: :class:`~fastsample.demo.models.DigitsClassifier`, cross-entropy with random
  translations of up to 2 pixels.

Both UNets use AdamW, warm-up then cosine learning rate, and an EMA of the weights (the EMA
weights are saved). Everything is seeded; the script runs on one CPU thread.
Run time on one thread of the 2-core development machine: classifier 22 s, ddpm and flow about
8 min each (2,500 steps at 0.19 s) on an otherwise idle core; with that machine shared (load
average 8-12) the two UNets trained side by side took about 70 min each.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler

from ..pipelines import RectifiedFlowPipeline
from .data import digits_split
from .models import DigitsClassifier, make_unet

__all__ = ["train_unet", "train_classifier", "main", "WEIGHTS_DIR"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p, 1.0 - decay)


def train_unet(
    kind: str,
    out_dir: str | Path,
    steps: int = 2500,
    batch_size: int = 128,
    lr: float = 2e-3,
    ema_decay: float = 0.999,
    seed: int = 0,
    log_every: int = 250,
):
    """Train the ``"ddpm"`` or ``"flow"`` UNet and save its pipeline to ``out_dir``; returns the pipeline."""
    if kind not in ("ddpm", "flow"):
        raise ValueError(f"kind must be 'ddpm' or 'flow', got {kind!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x_train = digits_split()[0].images
    unet = make_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    if kind == "ddpm":
        scheduler = DDPMScheduler(
            num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon"
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, x_train.shape[0], (batch_size,), generator=gen)
        x0 = x_train[idx]
        eps = torch.randn(x0.shape, generator=gen)
        if kind == "ddpm":
            t = torch.randint(0, 1000, (batch_size,), generator=gen)
            xt = scheduler.add_noise(x0, eps, t)
            target = eps
        else:
            t = torch.rand(batch_size, generator=gen)
            tb = t.view(-1, 1, 1, 1)
            xt = (1.0 - tb) * x0 + tb * eps
            target = eps - x0
            t = 1000.0 * t
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup=200)
        loss = F.mse_loss(unet(xt, t).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        _ema_update(ema, unet, min(ema_decay, (1.0 + step) / (10.0 + step)))
        if step % log_every == 0 or step == steps - 1:
            print(f"[{kind}] step {step:5d} loss {loss.item():.4f} {time.time() - start:7.1f}s", flush=True)
    if kind == "ddpm":
        pipe = DDPMPipeline(unet=ema, scheduler=scheduler)
    else:
        pipe = RectifiedFlowPipeline(unet=ema, scheduler=scheduler)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    print(f"[{kind}] saved to {out_dir} after {time.time() - start:.1f}s", flush=True)
    return pipe


def _translate(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random integer translations of up to ``max_shift`` pixels, padding with the background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, 1, h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, 1, h, w)
    return out.gather(3, cols)


def train_classifier(out_dir: str | Path, epochs: int = 40, batch_size: int = 64, lr: float = 2e-3, seed: int = 0):
    """Train the digits classifier on the train split and save it to ``out_dir``; returns the model."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    train, heldout = digits_split()
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = train.images.shape[0]
    steps, step, start = epochs * math.ceil(n / batch_size), 0, time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, steps, lr, warmup=50)
            loss = F.cross_entropy(model(_translate(train.images[idx], 2, gen)), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if epoch % 10 == 0 or epoch == epochs - 1:
            print(f"[classifier] epoch {epoch:3d} loss {loss.item():.4f} {time.time() - start:6.1f}s", flush=True)
    model.eval()
    with torch.no_grad():
        acc = (model(heldout.images).argmax(1) == heldout.labels).float().mean().item()
    print(f"[classifier] held-out accuracy {acc:.4f} (evaluation only)", flush=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    print(f"[classifier] saved to {out_dir} after {time.time() - start:.1f}s", flush=True)
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=["ddpm", "flow", "classifier", "all"], default="all")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--steps", type=int, default=2500, help="UNet training steps (batch 128)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.which in ("classifier", "all"):
        train_classifier(args.out / "classifier")
    for kind in ("ddpm", "flow"):
        if args.which in (kind, "all"):
            train_unet(kind, args.out / kind, steps=args.steps)


if __name__ == "__main__":
    main()
