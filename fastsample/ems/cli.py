"""The ``fastsample ems`` command: compute (and optionally validate) EMS statistics for a model."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .._io import UserError, refuse_existing
from ..formats.ems_file import EMS, model_fingerprint
from .estimation import compute_ems
from .models import unet_model_fn, vae_latents
from .validation import summary, validate_ems, validation_text

# --- command line ---------------------------------------------------------------------------------------

# options that only computing statistics reads (not validating given ones with --ems)
ESTIMATION_ONLY = ("data", "grid_size", "num_samples", "t_start", "t_end", "height", "checkpoint", "seed")


def _add_arguments(p):
    from .._args import device, positive_int

    p.add_argument(
        "--model", required=True, help="'demo-ddpm', 'demo-flow', or a local diffusers pipeline directory / hub id"
    )
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--data", default=None, help="images in [-1, 1] as .npy/.pt (N, C, H, W); 'self' for SD's own")
    p.add_argument("--prompts", default=None, help="text file, one prompt per line (SD/SDXL)")
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--grid-size", type=positive_int, default=250, help="number of lambda points")
    p.add_argument("--num-samples", type=positive_int, default=1024, help="samples per lambda point")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--t-start", type=float, default=None)
    p.add_argument("--t-end", type=float, default=None)
    p.add_argument("--height", type=int, default=None, help="SD image height (latents are height / 8)")
    p.add_argument("--checkpoint", default=None, help="partial-sums file for resuming")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--validate",
        action="store_true",
        help="then compare DPM-Solver-v3 with and without the statistics at NFE 5-10 (stored in the file)",
    )
    p.add_argument("--validate-samples", type=int, default=1024, help="held-out starts for --validate")
    p.add_argument(
        "--ems",
        default=None,
        help="validate these existing statistics of --model (with --validate) instead of computing new ones",
    )


def _load_images(path):
    if path.endswith(".npy"):
        return torch.from_numpy(np.load(path)).float()
    return torch.load(path).float()


def _run(args) -> Path:
    from accelerate import Accelerator

    refuse_existing(args.out, args.force)  # before the work, not after it
    if args.checkpoint and Path(args.checkpoint).resolve() == Path(args.out).resolve():
        raise UserError(f"--checkpoint {args.checkpoint} is also --out; give it its own name")
    if args.ems and not args.validate:
        raise UserError("--ems FILE is for --validate: give --validate, or leave out --ems to compute statistics")
    defaults = argparse.ArgumentParser()
    _add_arguments(defaults)
    given = [k for k in vars(args) if getattr(args, k) != defaults.get_default(k)]
    unread = ESTIMATION_ONLY if args.ems else () if args.validate else ("validate_samples",)
    unread = [k for k in given if k in unread]
    if unread:
        why = "--ems validates given statistics" if args.ems else "there is no --validate"
        names = ", ".join("--" + k.replace("_", "-") for k in unread)
        raise UserError(f"{names}: not used, since {why}; leave them out")
    acc = Accelerator()

    def existing(unet):  # --ems: the given statistics, checked against the model (and the config below)
        if args.ems is None:
            return None
        ems = EMS.load(args.ems)
        ems.check(model=unet)
        return ems

    device = args.device or acc.device
    common = dict(
        grid_size=args.grid_size,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        t_start=args.t_start,
        t_end=args.t_end,
        seed=args.seed,
        checkpoint=args.checkpoint,
        progress=not args.no_progress,
        accelerator=acc,
        device=device,
    )
    if args.model in ("demo-ddpm", "demo-flow"):
        from ..demo import digits_split, load_ddpm_pipeline, load_flow_pipeline

        flow = args.model == "demo-flow"
        pipe = load_flow_pipeline() if flow else load_ddpm_pipeline()
        unet = pipe.unet.to(device).eval()
        data = _load_images(args.data) if args.data else digits_split()[0].images
        if flow:  # lambda is infinite at t = 1 and t = 0: the range the solver's finite steps use
            common["t_start"] = 0.995 if args.t_start is None else args.t_start
            common["t_end"] = 0.005 if args.t_end is None else args.t_end
        fn = unet_model_fn(unet)
        ems = existing(unet) or compute_ems(
            fn,
            pipe.scheduler.config,
            data,
            model_id=f"fastsample/{args.model}",
            model_hash=model_fingerprint(unet),
            **common,
        )
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(args.model).to(device)
        unet = pipe.unet.eval()
        if getattr(unet.config, "cross_attention_dim", None) is None:
            data = None if args.ems else _load_images(args.data)
            fn = unet_model_fn(unet)
            guidance = 1.0
        else:
            prompts = Path(args.prompts).read_text().splitlines() if args.prompts else [""]
            pe, ne = pipe.encode_prompt(prompts, device, 1, args.guidance_scale > 1.0)[:2]
            fn = unet_model_fn(unet, pe, ne, args.guidance_scale)
            guidance = args.guidance_scale
            if args.ems:  # validating given statistics: no data needed
                data = None
            elif args.data == "self":
                h = args.height or unet.config.sample_size * pipe.vae_scale_factor
                data = pipe(prompts, height=h, width=h, output_type="latent", guidance_scale=guidance).images.cpu()
            else:
                data = vae_latents(pipe.vae, _load_images(args.data))
        ems = existing(unet) or compute_ems(
            fn,
            pipe.scheduler.config,
            data,
            guidance_scale=guidance,
            model_id=args.model,
            model_hash=model_fingerprint(unet),
            **common,
        )
    if acc.is_main_process:
        print(summary(ems))
        if args.validate:
            print(
                validation_text(
                    validate_ems(
                        ems,
                        fn,
                        pipe.scheduler.config,
                        num_samples=args.validate_samples,
                        device=device,
                        batch_size=args.batch_size,
                    )
                )
            )
        return ems.save(args.out)
    return Path(args.out)


def main(argv=None) -> Path:
    """``fastsample ems ...`` as a function: parse ``argv`` and compute, save and return the file path."""
    from .._args import ArgumentParser

    p = ArgumentParser(prog="fastsample ems", description="compute DPM-Solver-v3 empirical model statistics")
    _add_arguments(p)
    return _run(p.parse_args(argv))


if __name__ == "__main__":
    main()
