"""A sweep's reference solution: each sample's endpoint from a high-accuracy solver run on the same noise.

With ``"rmse"`` in ``[metric] metrics`` every cell reports the per-sample RMSE of its images (in [0, 1], the
images the metrics see) against these endpoints (:func:`fastsample.fid.bootstrap.per_sample_rmse`), its mean
and a bootstrap 95% interval. ``[metric] reference_solver = { name = ..., config = {...}, steps = N }``
(checked by :func:`fastsample.sweep.config.reference_spec`) names the solver (a sweep scheduler entry plus its
step count); without it :data:`DEFAULT` is used: DPM-Solver++(3M) (Lu et al., arXiv 2211.01095) on a uniform
log-SNR grid (VP) or uniform t (flow), 100 steps. The solver also runs at half its steps, and the mean RMSE
between the two (``converged``) is reported beside the errors: a method error not well above it is not
resolved.

The endpoints are computed once per sweep and guidance scale and cached in the sweep's output folder,
under a name made of everything they depend on (model digest, solver class and full config, steps, seed,
sample count, versions); each cell's key holds that name, so a changed reference recomputes the cells.
"""

from __future__ import annotations

import io
import json
import sys

import torch

from .._io import atomic_write
from .config import SchedulerSpec, _hash

__all__ = ["DEFAULT", "ReferenceSolution"]

DEFAULT = {"name": "fastsample.S3Scheduler", "config": {"builtin_schedule": "dpmsolver++3m"}, "steps": 100}
VP_GRID = {"time_grid": "uniform_lambda"}  # starts at t = 1 as every Diffusers grid can; flow: uniform t (default)


class ReferenceSolution:
    """The reference endpoints of this process's samples for one guidance scale, computed or read from the cache.

    ``images``: (n, C, H, W) float32 in [0, 1] for the sample indices given, in their order; ``info``: the solver,
    its steps and ``converged`` (mean per-sample RMSE between ``steps`` and ``steps // 2``); ``key``: the cache
    name's content, part of every cell's key.
    """

    def __init__(self, spec: dict | None, source, base_key: dict, indices, guidance: float, batch_size: int, folder):
        from ..core.schedules import is_flow_config
        from ..fid.bootstrap import per_sample_rmse

        if spec is None:
            flow = is_flow_config(dict(source.scheduler_config))
            spec = {**DEFAULT, "config": DEFAULT["config"] if flow else {**DEFAULT["config"], **VP_GRID}}
        label = f"reference solver {spec['name']}"
        sched = SchedulerSpec(spec["name"], label, spec["config"]).build(source.scheduler_config)
        config = dict(sched.config)
        config.pop("_use_default_values", None)
        solver = {"class": spec["name"], "config": json.loads(json.dumps(config, default=str))}
        self.key = {**base_key, "solver": solver, "steps": spec["steps"], "guidance": guidance}
        indices = list(indices)
        path = folder / f"reference_solution-{_hash(self.key)}-{_hash(indices)}.pt"
        if path.is_file():
            try:
                saved = torch.load(path, weights_only=True)
                if saved["key"] == _hash(self.key) and saved["images"].shape[0] == len(indices):
                    self.images, self.info = saved["images"], json.loads(saved["info"])
                    return
            except Exception as e:  # a truncated or foreign file: say so and recompute
                print(
                    f"sweep: reference solution file {path.name} is unreadable ({e}); recomputing it", file=sys.stderr
                )
        print(
            f"sweep: computing the reference solution ({spec['name']}, {spec['steps']} steps; cached)", file=sys.stderr
        )

        def run(steps):
            out = []
            for i in range(0, len(indices), batch_size):
                out.append(source.generate(sched, steps, indices[i : i + batch_size], guidance).float().cpu())
            return torch.cat(out)

        self.images = run(spec["steps"])
        half = run(spec["steps"] // 2)
        self.info = {"solver": spec["name"], "config": spec["config"], "steps": spec["steps"],
                     "converged": float(per_sample_rmse(half, self.images).mean())}  # fmt: skip
        buf = io.BytesIO()
        torch.save({"key": _hash(self.key), "images": self.images, "info": json.dumps(self.info)}, buf)
        atomic_write(path, buf.getvalue())
