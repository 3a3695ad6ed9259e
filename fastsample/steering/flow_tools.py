"""Rectified-flow tools (Liu et al., arXiv 2209.03003): reflow pair generation and the straightness metric.

- :func:`generate_reflow_pairs`: (noise, ODE endpoint) pairs from any sampler, written as
  safetensors shards ``pairs-00000.safetensors``, ... with tensors ``noise`` and ``endpoint``
  (shapes (n, *shape), the sampler's dtype). Resumable: a finished shard is skipped, the noise of
  shard i is drawn from a generator seeded with (seed, i), so a re-run reproduces it, and every
  shard is written to a temporary file and renamed, so a killed run never leaves a partial shard.
  Endpoints come from :func:`ode_endpoint` (a denoiser of any prediction type, flow or VP schedule,
  any of our solvers) or :func:`pipeline_endpoint` (a Diffusers pipeline that accepts ``latents``).
- :func:`straightness` and :class:`StraightnessMeter`: S = sum_k w_k ||v_k - (x_end - x_start) /
  (t_end - t_start)||^2, the deviation of the sampler's velocities from the chord, with w_k the
  share of [t_end, t_start] that evaluation k covers (a left Riemann sum of Liu et al.'s
  integral_0^1 E||(X_1 - X_0) - v(X_t, t)||^2 dt). Per sample, summed over dimensions. The meter
  is a steering hook, so it measures a run of :func:`fastsample.solvers.sampling.sample` or of a scheduler.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .._io import atomic_path
from ..solvers.sampling import sample

__all__ = [
    "generate_reflow_pairs",
    "load_reflow_pairs",
    "ode_endpoint",
    "pipeline_endpoint",
    "straightness",
    "StraightnessMeter",
]


def ode_endpoint(model_fn: Callable, schedule, solver, grid, prediction_type: str = "flow_prediction") -> Callable:
    """``noise -> x(grid[-1])``: integrate the sampling ODE from ``grid[0]`` with x(grid[0]) = noise.

    For a VP schedule whose grid starts at t = 1 the noise is used as x_T directly (as samplers do).
    """
    grid = np.asarray(grid, dtype=np.float64)

    def endpoint(noise: torch.Tensor) -> torch.Tensor:
        return sample(model_fn, noise, schedule, solver, grid, prediction_type=prediction_type)

    return endpoint


def pipeline_endpoint(pipe, **call_kwargs) -> Callable:
    """``noise -> pipe(latents=noise, output_type="latent", ...)``: for SD, SDXL, SD3, Flux and similar pipelines.

    ``noise`` must have the shape the pipeline's ``latents`` argument takes (Flux: packed latents).
    A single prompt (a string) is repeated for every noise sample (``num_images_per_prompt``).
    """

    def endpoint(noise: torch.Tensor) -> torch.Tensor:
        kwargs = dict(call_kwargs)
        if not isinstance(kwargs.get("prompt"), list):
            kwargs["num_images_per_prompt"] = len(noise)
        out = pipe(latents=noise, output_type="latent", **kwargs)
        return out.images if hasattr(out, "images") else out[0]

    return endpoint


def _shard_path(out_dir: Path, i: int) -> Path:
    return out_dir / f"pairs-{i:05d}.safetensors"


def _finished(path: Path, n: int) -> bool:
    if not path.exists():
        return False
    try:
        t = load_file(str(path))
    except Exception:
        return False
    return set(t) == {"noise", "endpoint"} and len(t["noise"]) == n == len(t["endpoint"])


def generate_reflow_pairs(
    endpoint_fn: Callable,
    shape: tuple[int, ...],
    out_dir: str | os.PathLike,
    num_pairs: int,
    shard_size: int = 1024,
    batch_size: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[Path]:
    """Write ``num_pairs`` (noise, endpoint) pairs into shards of ``shard_size``; returns the shard paths.

    Args:
        endpoint_fn: noise (B, *shape) -> endpoint (B, *endpoint_shape), e.g. :func:`ode_endpoint`.
        shape: the shape of one noise sample.
        seed: shard i draws its noise from ``torch.Generator().manual_seed(seed * 1_000_003 + i)`` (CPU).
    """
    if num_pairs < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError("num_pairs, shard_size and batch_size must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = -(-num_pairs // shard_size)
    sizes = [min(shard_size, num_pairs - i * shard_size) for i in range(n_shards)]
    paths = [_shard_path(out, i) for i in range(n_shards)]
    done = [_finished(p, n) for p, n in zip(paths, sizes)]
    bar = tqdm(total=num_pairs, initial=sum(n for n, d in zip(sizes, done) if d), disable=not progress, unit="pair")
    for i, (path, n) in enumerate(zip(paths, sizes)):
        if done[i]:
            continue
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        noise = torch.randn((n, *shape), generator=gen, dtype=torch.float32).to(dtype)
        ends = []
        for b in range(0, n, batch_size):
            with torch.no_grad():
                ends.append(endpoint_fn(noise[b : b + batch_size].to(device)).detach().to("cpu"))
            bar.update(len(ends[-1]))
        with atomic_path(path) as tmp:
            save_file(
                {"noise": noise.contiguous(), "endpoint": torch.cat(ends).contiguous()},
                str(tmp),
                metadata={"seed": str(seed), "shard": str(i), "first_pair": str(i * shard_size)},
            )
    bar.close()
    return paths


def load_reflow_pairs(out_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs in ``out_dir``, shard order: (noise, endpoint)."""
    shards = sorted(Path(out_dir).glob("pairs-*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no reflow shards (pairs-*.safetensors) in {out_dir}")
    data = [load_file(str(p)) for p in shards]
    return torch.cat([d["noise"] for d in data]), torch.cat([d["endpoint"] for d in data])


def straightness(times, velocities, x_start: torch.Tensor, x_end: torch.Tensor, t_end: float) -> torch.Tensor:
    """Per-sample straightness (B,), float64: sum_k w_k ||v_k - chord||^2 (see the module docstring).

    Args:
        times: the evaluation times, decreasing, all > ``t_end``; ``times[0]`` is the start time.
        velocities: the velocity dx/dt at each evaluation, each (B, *shape).
        x_start, x_end: the states at ``times[0]`` and ``t_end``.
    """
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or len(t) != len(velocities) or len(t) == 0:
        raise ValueError("need one velocity per evaluation time")
    order = np.argsort(-t, kind="stable")
    t = t[order]
    edges = np.append(t, float(t_end))
    w = (edges[:-1] - edges[1:]) / (edges[0] - edges[-1])
    chord = (x_end.double() - x_start.double()) / (float(t_end) - t[0])
    out = torch.zeros(len(x_start), dtype=torch.float64, device=x_start.device)
    for wk, k in zip(w, order):
        d = velocities[k].double() - chord
        out += float(wk) * d.reshape(len(d), -1).square().sum(1)
    return out


class StraightnessMeter:
    """A steering hook that records (t, x, v = eps - x0) at every evaluation and changes nothing.

    ``meter.value(x_end, t_end)`` gives the per-sample straightness of the run (float64, (B,)).
    ``meter.reset()`` before reusing it for another run.
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.times, self.velocities, self.x_start = [], [], None

    def __call__(self, k, t, x, x0, eps):
        if self.x_start is None:
            self.x_start = x.detach().clone()
        self.times.append(float(t))
        self.velocities.append((eps - x0).detach().clone())
        return x, x0, eps

    def value(self, x_end: torch.Tensor, t_end: float = 0.0) -> torch.Tensor:
        if self.x_start is None:
            raise ValueError("the meter has not seen a run")
        return straightness(self.times, self.velocities, self.x_start, x_end, t_end)
