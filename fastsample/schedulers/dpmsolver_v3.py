"""``DPMSolverV3Scheduler``: DPM-Solver-v3 (Zheng et al., arXiv 2310.13268) as a drop-in Diffusers scheduler.

Config keys: ``ems_path`` (a statistics file from ``fastsample ems``; None = no statistics, l = 1,
s = b = 0, i.e. DPM-Solver++ with exact Taylor weights), ``guidance_scale`` (the scale the pipeline
samples with; checked against the statistics), and the solver options ``solver_order``,
``predictor_pseudo``, ``use_corrector``, ``corrector_pseudo``, ``lower_order_final``, ``half_corrector``;
each left at None takes the paper's preset for the number of steps (:func:`~fastsample.solvers.dpmsolver_v3.preset`),
as does the time grid when none of ``time_grid``, ``use_karras_sigmas``, ``use_lambdas``, ``timestep_spacing``,
``sigmas``/``timesteps`` is given (unguided: uniform lambda, guided: uniform t). ``timestep_spacing`` defaults
to None here (the preset); "linspace", "leading" or "trailing" give diffusers' integer timesteps, as for
``DPMSolverMultistepScheduler``, also when the key comes with another scheduler's config (SDXL's states
"leading"; a config that leaves it at its default does not pass it on). The statistics load lazily;
:meth:`DPMSolverV3Scheduler.use_ems` also takes an :class:`~fastsample.formats.ems_file.EMS` object.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from diffusers.utils import logging

from ..core import grids
from ..formats.ems_file import EMS, EMSMismatchError
from ..solvers.dpmsolver_v3 import DPMSolverV3, preset, validated_start
from .adapter import FastScheduler

logger = logging.get_logger(__name__)
_WARNED: set = set()  # (statistics, steps, grid or decision) already reported: each warning once


def _warn_off(ems: EMS, lam) -> None:
    """Warn once per statistics and grid (lambdas ``lam``) when the grid is not one their stored validation
    (:func:`~fastsample.ems.validate_ems`) checked, so another grid's decision applies
    (:func:`~fastsample.solvers.dpmsolver_v3.validated_start`), and when that decision switched them off."""
    v = ems.metadata.get("validation") or {}
    start = validated_start(ems, lam)
    where = str(ems.path) if ems.path else "in memory"
    steps, fin = len(lam) - 1, np.asarray(lam, dtype=np.float64)[np.isfinite(lam)]
    exact = any(
        d["steps"] == steps and len(d["lambdas"]) == len(fin) and np.allclose(d["lambdas"], fin, rtol=0, atol=1e-9)
        for d in v.get("decisions") or ()
    )
    key = (ems.metadata.get("sha256") or id(ems), steps)
    if v.get("decisions") and not exact and key + tuple(np.round(fin, 9)) not in _WARNED:
        _WARNED.add(key + tuple(np.round(fin, 9)))
        grid_names = sorted({d["grid"] for d in v["decisions"] if d["steps"] == steps})
        logger.warning(
            f"DPM-Solver-v3 statistics ({where}) were not validated on this {steps}-step grid (validated at "
            f"{steps} steps: {', '.join(grid_names) or 'none'}); the decision of the closest validated grid is "
            "used if it is within a fifth of a step, else the most cautious one (run fastsample ems --validate with "
            "this scheduler config to check this grid)."
        )
    if start is None or start <= v.get("lambda_max", np.inf) or key + (start,) in _WARNED:
        return
    _WARNED.add(key + (start,))
    logger.warning(
        f"DPM-Solver-v3 statistics ({where}) are not used on this {steps}-step grid: on their validation "
        "check they did not lower the error of the statistics-free solver there with confidence, so it runs as "
        "DPM-Solver++ (fastsample ems --validate prints the check)."
    )


class DPMSolverV3Scheduler(FastScheduler):
    artifact_keys = FastScheduler.artifact_keys + ("ems_path",)
    config_keys = {
        "timestep_spacing": None,
        "ems_path": None,
        "guidance_scale": None,
        "solver_order": None,
        "predictor_pseudo": None,
        "use_corrector": None,
        "corrector_pseudo": None,
        "lower_order_final": None,
        "half_corrector": None,
    }

    # --- statistics ---------------------------------------------------------------------------------

    @property
    def ems(self) -> EMS | None:
        """The statistics (header read on first use, arrays when a grid is first prepared), or None."""
        if getattr(self, "_ems", None) is None and self.config.ems_path is not None:
            self._ems = EMS.load(self.config.ems_path)
            self._check_ems(self._ems)
        return getattr(self, "_ems", None)

    def use_ems(self, ems: EMS | str | None) -> DPMSolverV3Scheduler:
        """Use these statistics (an :class:`EMS`, a file path, or None); a saved file's path goes in the config."""
        if ems is None or isinstance(ems, EMS):
            self.register_to_config(ems_path=None if ems is None or ems.path is None else str(ems.path))
            self._ems = ems
            if ems is not None:
                self._check_ems(ems)
        else:
            self.register_to_config(ems_path=str(ems))
            self._ems = None
            _ = self.ems
        self.plan = None
        self.solver = self.make_solver()
        return self

    def _save_artifact(self, key: str, directory: Path) -> str | None:
        """Statistics given in memory (no file) are written into the folder as ``ems.safetensors``."""
        ems = getattr(self, "_ems", None)
        if key == "ems_path" and ems is not None and self.config.ems_path is None:
            copy.copy(ems).save(directory / "ems.safetensors")
            return "ems.safetensors"
        return super()._save_artifact(key, directory)

    def _check_ems(self, ems: EMS):
        g = self.config.guidance_scale
        if g is None and ems.guidance_scale != 1.0:
            raise EMSMismatchError(
                f"these statistics were computed with guidance scale {ems.guidance_scale}; set the scheduler's "
                "`guidance_scale` to the scale the pipeline samples with"
            )
        ems.check(prediction_type=self.prediction_type, schedule=self.schedule, guidance_scale=g)

    def check_model(self, model) -> None:
        """Raise :class:`~fastsample.formats.ems_file.EMSMismatchError` unless the statistics fit ``model``."""
        if self.ems is not None:
            self.ems.check(model=model)

    # --- solver and grid ----------------------------------------------------------------------------

    def _guided(self) -> bool:
        g = self.config.guidance_scale
        return g is not None and g > 1.0

    def solver_options(self, nfe: int) -> dict:
        """Solver options and preset ``time_grid`` for ``nfe`` steps: the preset's, with the ones the config gives."""
        c = self.config
        p = preset(nfe, self._guided(), c.guidance_scale or 1.0)
        given = {
            "order": c.solver_order,
            "predictor_pseudo": c.predictor_pseudo,
            "use_corrector": c.use_corrector,
            "corrector_pseudo": c.corrector_pseudo,
            "lower_order_final": c.lower_order_final,
            "half_corrector": c.half_corrector,
        }
        p.update({k: v for k, v in given.items() if v is not None})
        return p

    def make_solver(self, nfe: int = 10):
        opts = self.solver_options(nfe)
        opts.pop("time_grid")
        return DPMSolverV3(stats=self.ems, **opts)

    def solver_for(self, num_inference_steps: int):
        """The preset's options depend on the NFE: a new solver per run length."""
        return self.make_solver(num_inference_steps)

    def make_grid(self, num_inference_steps: int, sigmas=None, timesteps=None, mu=None) -> np.ndarray:
        """As the base class; with no grid option given, the preset grid (uniform lambda or uniform t)."""
        c, s = self.config, self.schedule
        # released flow configs carry diffusers' default "linspace" (their sigmas are uniform, as ours); leading and
        # trailing would have no effect on a flow grid, so they are refused
        if s.is_flow and c.timestep_spacing not in (None, "linspace"):
            raise ValueError(
                f"timestep_spacing={c.timestep_spacing!r} sets diffusers' integer timesteps of a diffusion schedule; "
                "a flow model's grid is set by time_grid and the shift: leave timestep_spacing unset"
            )
        explicit = sigmas is not None or timesteps is not None or c.time_grid or c.use_karras_sigmas or c.use_lambdas
        explicit = explicit or c.timestep_spacing is not None or c.step_schedule_file
        if explicit or s.is_flow:
            return super().make_grid(num_inference_steps, sigmas=sigmas, timesteps=timesteps, mu=mu)
        name = self.solver_options(num_inference_steps)["time_grid"]
        ems = self.ems
        kw = {} if ems is None else {"t_start": ems.metadata["t_start"], "t_end": ems.metadata["t_end"]}
        grid = grids.make_grid(name, s, num_inference_steps, final_zero=c.final_sigmas_type == "zero", **kw)
        return self._snap(grid)

    def _set_grid(self, grid, device=None):
        super()._set_grid(grid, device)
        if self.ems is not None:
            with np.errstate(divide="ignore"):
                _warn_off(self.ems, np.asarray(self.schedule.lambda_(np.asarray(grid, dtype=np.float64))))

    def step(self, model_output, timestep, sample, *args, **kwargs):
        ems = self.ems
        if ems is not None and tuple(sample.shape[1:]) != ems.shape:
            raise EMSMismatchError(
                f"sample shape {tuple(sample.shape[1:])} does not match the statistics' shape {ems.shape} "
                f"({str(ems.path) if ems.path else 'in memory'}); statistics are per element of one latent shape"
            )
        return super().step(model_output, timestep, sample, *args, **kwargs)
