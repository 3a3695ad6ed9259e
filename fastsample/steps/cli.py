"""``fastsample steps``: optimise the time steps of one solver at one NFE for a model, write a step schedule.

    fastsample steps --model demo-ddpm --solver S3Scheduler --set builtin_schedule=unipc-bh2 --nfe 5 \\
        --seeds 0-3 --heldout-seeds 100-101 --out unipc5.json

``--model``: ``demo-ddpm``, ``demo-flow`` or a local Diffusers pipeline folder (a ``unet`` or a
``transformer``). ``--solver``: a fastsample or Diffusers scheduler class, built from the pipeline's
scheduler config with the ``--set KEY=VALUE`` overrides (JSON values). Conditions: ``--class-labels``
for class-conditional UNets; ``--prompts FILE`` (one prompt a line) for text-to-image pipelines with
an ``encode_prompt`` (Stable Diffusion 1/2, SD3), encoded by the pipeline's own text encoders and
searched without classifier-free guidance (guidance scale 1); ``--resolutions`` for flow models
(Flux-style ``mu`` from each resolution's sequence length H * W when the scheduler uses dynamic
shifting). Every prompt or label is combined with every resolution. Teacher trajectories and
the cost matrix are checkpointed in ``--checkpoint`` (default ``OUT.ckpt``) and reused on a rerun;
a checkpoint made for other inputs is refused. Under ``accelerate launch`` the teacher trajectories are
split over the processes; the main process then optimises and writes the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from ..formats.step_schedule import StepScheduleError
from .models import from_pipeline
from .optimize import (
    CheckpointMismatch,
    Condition,
    SchedulerRunner,
    StepProblem,
    compute_teachers,
    optimize,
    to_schedule,
)

__all__ = ["main"]


def _ints(text: str) -> list[int]:
    """``"0-3,7"`` -> [0, 1, 2, 3, 7] (non-negative integers)."""
    out = []
    try:
        for part in filter(None, (x.strip() for x in text.split(","))):
            a, _, b = part.partition("-")
            out.extend(range(int(a), int(b or a) + 1))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected integers or ranges like 0-3,7, got {text!r}") from e
    if not out:
        raise argparse.ArgumentTypeError(f"no integers in {text!r}")
    return out


def _setting(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set needs KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="demo-ddpm, demo-flow, or a local Diffusers pipeline folder")
    p.add_argument("--solver", required=True, help="scheduler class (fastsample or diffusers), e.g. DEISScheduler")
    p.add_argument("--set", dest="settings", type=_setting, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--nfe", type=int, required=True, help="model evaluations per sample")
    p.add_argument("--seeds", type=_ints, default=[0, 1], help="selection seeds, e.g. 0-3 (default 0-1)")
    p.add_argument("--heldout-seeds", type=_ints, default=[100], help="held-out seeds (default 100)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per seed and condition (default 16)")
    p.add_argument("--class-labels", type=_ints, default=None, help="class labels searched over")
    p.add_argument("--heldout-class-labels", type=_ints, default=None, help="class labels for the held-out report")
    p.add_argument("--prompts", default=None, metavar="FILE", help="prompts searched over, one a line")
    p.add_argument("--heldout-prompts", default=None, metavar="FILE", help="prompts for the held-out report")
    p.add_argument("--resolutions", type=_ints, default=None, help="flow models: sample sizes searched over")
    p.add_argument("--heldout-resolutions", type=_ints, default=None, help="sample sizes for the held-out report")
    p.add_argument("--fine-steps", type=int, default=64, help="steps of the fine teacher grid (default 64)")
    p.add_argument("--teacher-substeps", type=int, default=2, help="teacher steps per fine step (default 2)")
    p.add_argument("--max-evals", type=int, default=60, help="refinement runs of the real solver (default 60)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default OUT.ckpt)")
    p.add_argument("--out", required=True, help="the step schedule file to write")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--no-progress", action="store_true")


def _scheduler(name: str, config, settings) -> object:
    import diffusers

    from .. import schedulers as ours

    cls = getattr(ours, name, None) or getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config") or not name.endswith("Scheduler"):
        raise ValueError(f"--solver {name!r} is not a fastsample or diffusers scheduler class")
    return cls.from_config(dict(config), **dict(settings))


def _mu(config, seq_len: int) -> float:
    """Flux's linear mu(sequence length) from the scheduler config (base/max shift and lengths)."""
    lo, hi = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    a, b = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    return float(a + (b - a) * (seq_len - lo) / (hi - lo))


def _read_prompts(path: str) -> list[str]:
    """The non-empty lines of a prompts file (UTF-8)."""
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {path} has no prompts (one a line)")
    return prompts


def _encode_prompt(pipe, prompt: str) -> dict:
    """The network's text keyword arguments for one prompt, without classifier-free guidance (batch 1)."""
    if type(pipe).__name__.startswith("StableDiffusion3"):
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, prompt, prompt, do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
    if type(pipe).__name__.startswith("StableDiffusion") and hasattr(pipe, "encode_prompt"):
        embeds, _ = pipe.encode_prompt(prompt, pipe.device, 1, False)
        return {"encoder_hidden_states": embeds}
    raise ValueError(
        f"--prompts: {type(pipe).__name__} is not a Stable Diffusion 1/2 or SD3 pipeline; "
        "pass conditions through the API (fastsample.steps.Condition)"
    )


def _conditions(pipe, shape, scheduler, is_flow, labels, sizes, prompts) -> list[Condition]:
    """Every resolution with every class label or prompt (labels and prompts exclude each other)."""
    dynamic = bool(scheduler.config.get("use_dynamic_shifting", False))
    if sizes is not None and not is_flow:
        raise ValueError("--resolutions applies to flow models")
    if labels is not None and prompts is not None:
        raise ValueError("--class-labels and --prompts exclude each other")
    texts = None if prompts is None else [(p, _encode_prompt(pipe, p)) for p in _read_prompts(prompts)]
    out = []
    for size in sizes or [None]:
        sh = shape if size is None else (shape[0], size, size)
        mu = _mu(scheduler.config, sh[1] * sh[2]) if dynamic else None
        res = "x".join(map(str, sh[1:]))
        if texts is not None:
            out += [Condition(tuple(sh), mu, kw, f"{res} {text!r}") for text, kw in texts]
            continue
        for label in labels or [None]:
            kw = {} if label is None else {"class_labels": torch.tensor([label])}
            out.append(Condition(tuple(sh), mu, kw, res + ("" if label is None else f" label {label}")))
    return out


def _load(model: str):
    """(pipeline, ``from_pipeline`` arguments, sample shape, scheduler config) for ``--model``."""
    if model in ("demo-ddpm", "demo-flow"):
        from .. import demo as shipped

        pipe = shipped.load_ddpm_pipeline() if model == "demo-ddpm" else shipped.load_flow_pipeline()
    elif os.path.isdir(model):
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True)
    else:
        raise ValueError(f"--model {model!r} is neither demo-ddpm, demo-flow nor a pipeline folder")
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    size = net.config.sample_size if net is not None else None
    shape = (net.config.in_channels, size, size) if net is not None else None
    return pipe, from_pipeline(pipe, name=model), shape, dict(pipe.scheduler.config)


def _run(args) -> int:
    if os.path.exists(args.out) and not args.force:
        raise ValueError(f"{args.out} exists; pass --force to overwrite it")
    from accelerate import PartialState

    state = PartialState()
    pipe, spec, shape, config = _load(args.model)
    scheduler = _scheduler(args.solver, config, args.settings)
    is_flow = spec["noise_schedule"].is_flow
    problem = StepProblem(
        conditions=_conditions(pipe, shape, scheduler, is_flow, args.class_labels, args.resolutions, args.prompts),
        heldout_conditions=_conditions(
            pipe,
            shape,
            scheduler,
            is_flow,
            args.heldout_class_labels or args.class_labels,
            args.heldout_resolutions or args.resolutions,
            args.heldout_prompts or args.prompts,
        ),
        seeds=args.seeds,
        heldout_seeds=args.heldout_seeds,
        batch_size=args.batch_size,
        fine_steps=args.fine_steps,
        teacher_substeps=args.teacher_substeps,
        **spec,
    )
    runner = SchedulerRunner(scheduler, problem)
    runner.steps_for(args.nfe)
    checkpoint = args.checkpoint or args.out + ".ckpt"
    progress = not args.no_progress
    t0 = time.perf_counter()
    if state.num_processes > 1:
        compute_teachers(problem, checkpoint, state.process_index, state.num_processes, progress)
        state.wait_for_everyone()
        if not state.is_main_process:
            return 0
    teachers = compute_teachers(problem, checkpoint, progress=progress and state.num_processes == 1)
    result = optimize(problem, runner, args.nfe, teachers, checkpoint, args.max_evals, progress)
    sched = to_schedule(problem, runner, result, teachers)
    sched.method["total_seconds"] = time.perf_counter() - t0
    sched.save(args.out)
    h = sched.report["heldout"]
    print(
        f"wrote {args.out}: NFE {args.nfe}, held-out per-sample RMSE {h['optimised']:.4g} vs "
        f"{h['fixed'][h['best_fixed']]:.4g} "
        f"on the best fixed grid ({h['best_fixed']}); {problem.model_fn.calls} model calls in this process"
    )
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastsample steps", description=__doc__.splitlines()[0])
    _add_arguments(p)
    args = p.parse_args(argv)
    if args.no_progress:
        from diffusers.utils import logging

        logging.disable_progress_bar()
    try:
        return _run(args)
    except (ValueError, StepScheduleError, CheckpointMismatch, FileNotFoundError, OSError) as e:
        print(f"fastsample steps: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
