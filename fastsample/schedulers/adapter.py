"""The Diffusers adapter: one stateful base class that implements the pipeline contract once.

A public scheduler is a subclass that declares its own config keys (diffusers' names) in
``config_keys`` and builds its solver in ``make_solver``; the base class turns the common and
the declared keys into a real ``@register_to_config __init__`` with an explicit signature, so
``from_config`` / ``save_pretrained`` / ``from_pretrained`` work as for any diffusers scheduler.

The contract (see docs/design.md): ``set_timesteps(num_inference_steps, device, sigmas, timesteps,
mu)``, ``step(model_output, timestep, sample, generator, return_dict)``, ``scale_model_input``,
``add_noise``, ``scale_noise``, ``set_begin_index``, ``order``, ``init_noise_sigma``,
``_compatibles``. Diffusers' integer or float ``timestep`` labels exist only in this layer.
In this layer only, ``sigmas`` has diffusers' meaning: sigma / alpha for VP models (k-diffusion's
noise level, elsewhere called ``sigma_ve``), and sigma = t for flow models.
"""

from __future__ import annotations

import inspect
import numbers
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput, logging

from ..core import grids
from ..core.parameterization import check_prediction_type
from ..core.schedules import FLOW_MATCH_SCHEDULERS, DiscreteVP, RectifiedFlow, is_flow_config
from ..solvers.sampling import NonFiniteModelOutput, advance

logger = logging.get_logger(__name__)

__all__ = ["FastScheduler", "FastSchedulerOutput", "COMMON_CONFIG", "num_steps"]

# Keys every scheduler of ours accepts, with diffusers' names and defaults.
COMMON_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "use_karras_sigmas": False,
    "use_lambdas": False,
    "time_grid": None,
    "step_schedule_file": None,
    "final_sigmas_type": "zero",
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
_FINAL_SIGMAS = ("zero", "sigma_min")


@dataclass
class FastSchedulerOutput(BaseOutput):
    """``prev_sample``: the next state; ``pred_original_sample``: x0-hat at this step (input dtype)."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def _artifact_file(source, subfolder, key: str, name: str, hub: dict) -> str:
    """The local path of a scheduler file saved beside its config: in the folder, or fetched from the Hub."""
    if source is not None and os.path.isdir(source):
        path = Path(source, subfolder or "", name)
        if not path.is_file():
            raise FileNotFoundError(f"the scheduler config's {key} names {name!r}, but {str(path)!r} does not exist")
        return str(path.resolve())
    from huggingface_hub import hf_hub_download

    return hf_hub_download(str(source), name, subfolder=subfolder, **hub)


def num_steps(n) -> int:
    """``num_inference_steps`` as an int >= 1; ValueError for 2.5, 0, True or "8"."""
    if isinstance(n, bool) or not isinstance(n, numbers.Real) or float(n) != int(n) or int(n) < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {n!r}")
    return int(n)


def _expose_scheduler_base(cls):
    """Diffusers' pipeline loader looks a component's base classes up in the module that
    model_index.json names (the class's own module); make ``SchedulerMixin`` findable there, so
    ``DiffusionPipeline.from_pretrained`` and ``scheduler=`` work for every subclass, users' too."""
    module = sys.modules.get(cls.__module__)
    if module is not None and not hasattr(module, "SchedulerMixin"):
        module.SchedulerMixin = SchedulerMixin


def _build_init(cls):
    keys = {**COMMON_CONFIG, **cls.config_keys}
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=v) for k, v in keys.items()]

    def __init__(self, *args, **kwargs):
        self._configure()

    __init__.__signature__ = inspect.Signature(params)
    __init__.__doc__ = f"Config keys and defaults: {keys}"
    __init__.__qualname__ = f"{cls.__name__}.__init__"
    cls.__init__ = register_to_config(__init__)


class FastScheduler(SchedulerMixin, ConfigMixin):
    """Base class of every fastsample scheduler (see the module docstring).

    Subclasses set ``config_keys`` (a dict of their own keys and defaults) and implement
    ``make_solver()`` returning a :class:`fastsample.solvers.base.Solver`.
    """

    config_name = "scheduler_config.json"
    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + list(FLOW_MATCH_SCHEDULERS)
    config_keys: dict = {}
    supports_vp = True  # False for a flow-only scheduler (contract tests then skip VP configs)
    supports_flow = True  # False for a VP-only scheduler
    order = 1
    init_noise_sigma = 1.0

    # Config keys that name a file the scheduler needs (statistics, solver schedules). save_pretrained
    # copies each file into the scheduler folder and stores its name relative to it; from_pretrained
    # resolves it against the folder (or the Hub repo), so a saved folder works wherever it is moved.
    artifact_keys: tuple = ("step_schedule_file",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _expose_scheduler_base(cls)
        if "config_keys" in cls.__dict__:
            _build_init(cls)

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' ``from_config``; a FlowMatch config switches on flow mode (its ``shift`` kept)."""
        if config is not None and not isinstance(config, dict):
            config = dict(config)
        if config is not None and "use_flow_sigmas" not in config and is_flow_config(config):
            config = dict(config)
            config["use_flow_sigmas"] = True
            config["prediction_type"] = "flow_prediction"
            config["flow_shift"] = config.get("shift", 1.0)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder=None, return_unused_kwargs=False, **kwargs):
        """As diffusers' ``from_pretrained``; file keys (``artifact_keys``) resolve against the loaded folder."""
        hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        config, kwargs, _ = cls.load_config(
            pretrained_model_name_or_path=pretrained_model_name_or_path,
            subfolder=subfolder,
            return_unused_kwargs=True,
            return_commit_hash=True,
            **kwargs,
        )
        for key in cls.artifact_keys:
            name = config.get(key)
            if name is not None and not os.path.isabs(name):
                config[key] = _artifact_file(pretrained_model_name_or_path, subfolder, key, name, hub)
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def save_config(self, save_directory, push_to_hub: bool = False, **kwargs):
        """As diffusers' ``save_config``, with each file key's file copied into ``save_directory``."""
        os.makedirs(save_directory, exist_ok=True)
        names = {}
        for key in self.artifact_keys:
            name = self._save_artifact(key, Path(save_directory))
            if name is not None:
                if name in names.values():
                    raise ValueError(f"two scheduler files would both be saved as {name!r}; rename one")
                names[key] = name
        given = {k: self.config[k] for k in names}
        self.register_to_config(**names)
        try:
            super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            self.register_to_config(**given)

    def _save_artifact(self, key: str, directory: Path) -> str | None:
        """Copy the file named by config key ``key`` into ``directory``; returns its name there (None: no file)."""
        path = self.config[key]
        if path is None:
            return None
        src = Path(path)
        if not src.is_file():
            raise FileNotFoundError(f"cannot save the scheduler: its {key} {str(src)!r} does not exist")
        dst = directory / src.name
        if not (dst.exists() and os.path.samefile(src, dst)):
            shutil.copyfile(src, dst)
        return src.name

    def make_solver(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def solver_for(self, num_inference_steps: int):
        """The (immutable) solver of a run of this many steps; schedulers whose options depend on it override this."""
        return self.solver

    def _configure(self):
        c = self.config
        if c.final_sigmas_type not in _FINAL_SIGMAS:
            raise ValueError(f"final_sigmas_type must be one of {_FINAL_SIGMAS}, got {c.final_sigmas_type!r}")
        if c.trained_betas is not None and len(c.trained_betas) != c.num_train_timesteps:
            raise ValueError(
                f"trained_betas has {len(c.trained_betas)} entries, num_train_timesteps is {c.num_train_timesteps}"
            )
        if c.use_flow_sigmas:
            self.schedule = RectifiedFlow(c.num_train_timesteps)
        else:
            self.schedule = DiscreteVP.from_config(c)
        self.prediction_type = check_prediction_type(c.prediction_type, self.schedule.is_flow)
        self._check_grid_option()
        self.solver = self.make_solver()
        self.order = self.solver.stages
        self.plan = None
        self.num_inference_steps = None
        self.timesteps = None
        self.sigmas = None
        self.steering = None
        self._grid = None
        self._begin_index = None
        self._step_index = None
        self._reset_run()

    def _check_grid_option(self):
        """Refuse a grid option the model cannot use (it would otherwise be ignored without a word)."""
        name = self._grid_name()
        if name is not None and name not in grids.GRIDS:
            raise ValueError(f"unknown time_grid {name!r}; allowed: {', '.join(grids.GRIDS)}")
        if self.schedule.is_flow and name is not None and grids.GRIDS[name] not in grids.FLOW_GRIDS:
            option = f"time_grid={name!r}" if self.config.time_grid else "use_karras_sigmas / use_lambdas"
            raise ValueError(
                f"{option} needs a finite noise level at t = 1, which a flow model does not have; flow models take "
                f"time_grid in {sorted(n for n, f in grids.GRIDS.items() if f in grids.FLOW_GRIDS)} or sigmas="
            )

    def _reset_run(self):
        self._history = None
        self._run_plan = None
        self._run_offset = 0
        self._bad_step = None

    def __len__(self):
        return self.config.num_train_timesteps

    # Diffusers' per-training-timestep tables (float32 tensors of length num_train_timesteps), read by
    # img2img strength, SDXL denoising_end and training scripts. VP models only, as in diffusers.
    def _vp_alphas_cumprod(self) -> np.ndarray:
        if self.schedule.is_flow:
            raise AttributeError("a flow-matching scheduler has no alphas_cumprod, alphas or betas")
        return self.schedule.alphas_cumprod

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.from_numpy(self._vp_alphas_cumprod()).float()

    @property
    def alphas(self) -> torch.Tensor:
        acp = self._vp_alphas_cumprod()
        return torch.from_numpy(acp / np.concatenate([[1.0], acp[:-1]])).float()

    @property
    def betas(self) -> torch.Tensor:
        return 1.0 - self.alphas

    # --- time grid ------------------------------------------------------------------------------

    def make_grid(self, num_inference_steps: int, sigmas=None, timesteps=None, mu=None) -> np.ndarray:
        """The float64 time grid (n + 1 entries, decreasing) for one call of ``set_timesteps``."""
        c, s = self.config, self.schedule
        final_zero = c.final_sigmas_type == "zero"
        if c.step_schedule_file is not None:
            from ..formats.step_schedule import scheduler_arguments

            sigmas, timesteps = scheduler_arguments(self, num_inference_steps, sigmas, timesteps)
        if timesteps is not None:
            grid = np.concatenate([s.t_of_timestep(timesteps), [0.0 if final_zero else s.t_min]])
        elif s.is_flow:
            if c.use_dynamic_shifting and mu is None:
                raise ValueError("`mu` must be passed when use_dynamic_shifting is True (SD3 / Flux pipelines do)")
            shift_mu = mu if c.use_dynamic_shifting else None
            if sigmas is not None:
                base = np.asarray(sigmas, dtype=np.float64)
                t = grids.shift_sigmas(base, shift=c.flow_shift, mu=shift_mu, time_shift_type=c.time_shift_type)
                grid = np.concatenate([t, [0.0]]) if t[-1] > 0 else t
            else:  # a named grid in unshifted t from 1 to 0, shifted once
                base = grids.make_grid(self._grid_name() or "uniform_t", s, num_inference_steps, t_end=0.0)
                grid = grids.shift_sigmas(base, shift=c.flow_shift, mu=shift_mu, time_shift_type=c.time_shift_type)
            if not final_zero:
                grid[-1] = grid[-2] * 1e-3
        else:
            if sigmas is not None:
                ve = np.asarray(sigmas, dtype=np.float64)
                grid = np.concatenate([s.t_of_sigma_ve(ve[ve > 0]), [0.0 if final_zero else s.t_min]])
            else:
                name = self._grid_name()
                if name is None:
                    grid = grids.diffusers_spacing(
                        s, num_inference_steps, c.timestep_spacing, c.steps_offset, final_zero=final_zero
                    )
                else:
                    grid = grids.make_grid(name, s, num_inference_steps, final_zero=final_zero)
            grid = self._snap(grid)
        return grid

    def _grid_name(self) -> str | None:
        """The named grid the config asks for (``time_grid``, else Karras / uniform-lambda flags), or None."""
        c = self.config
        if c.time_grid is not None:
            return c.time_grid
        return "karras" if c.use_karras_sigmas else "uniform_lambda" if c.use_lambdas else None

    def _snap(self, grid):
        """Move VP evaluation times onto the integer timesteps the network was trained at.

        Where two times would land on one timestep (a grid denser than the training timesteps
        somewhere, e.g. Karras or uniform lambda at 50 steps near the data end), the grid is kept
        as it is: the run then has float timestep labels, which Diffusers' UNets and transformers
        take as they are (their time embeddings are continuous), and the solver's noise levels
        stay exactly those of the grid. Grids that fit keep integer labels (docs/design.md).
        """
        s = self.schedule
        inner = grid[:-1]
        snapped = s.t_of_timestep(np.clip(np.round(s.timestep(inner)), 0, s.num_train_timesteps - 1))
        out = np.concatenate([snapped, grid[-1:]])
        return out if np.all(np.diff(out) < 0) else grid

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | np.ndarray | None = None,
        timesteps: list[int] | np.ndarray | None = None,
        mu: float | None = None,
    ):
        """Prepare the solver's plan for a run (coefficients in float64 on the CPU, once)."""
        if sigmas is not None and timesteps is not None:
            raise ValueError("pass at most one of `sigmas` and `timesteps`")
        if sigmas is not None:
            sigmas = self._check_levels("sigmas", sigmas)
        if timesteps is not None:
            timesteps = self._check_levels("timesteps", timesteps)
        if num_inference_steps is None:
            if timesteps is not None:
                num_inference_steps = len(timesteps)
            elif sigmas is not None:
                num_inference_steps = int(np.sum(sigmas > 0))
            else:
                raise ValueError("pass num_inference_steps, sigmas or timesteps")
        n = num_steps(num_inference_steps)
        self.solver = self.solver_for(n)
        grid = self.make_grid(n, sigmas=sigmas, timesteps=timesteps, mu=mu)
        self._set_grid(grid, device)

    def _check_levels(self, name: str, values) -> np.ndarray:
        """User ``sigmas`` / ``timesteps`` as float64, or ValueError naming the argument and the fault.

        Both must be finite and strictly decreasing, within the schedule's range; ``sigmas`` may end
        with one 0 (the data end).
        """
        a = np.asarray(values.detach().cpu() if torch.is_tensor(values) else values, dtype=np.float64)
        s = self.schedule
        if name == "timesteps":  # labels may run either way (rectified-flow labels grow as t falls): check the times
            grids.check_grid(s.t_of_timestep(a) if a.size else a, "`timesteps`", least=None, min_len=1, shown=a)
            lo, hi = s.timestep(s.t_min), s.timestep(s.t_max)
        else:
            grids.check_grid(a, "`sigmas`", least=None, min_len=1)
            lo, hi = (0.0, 1.0) if s.is_flow else (s.sigma_ve(s.t_min), s.sigma_ve(s.t_max))
        body = a[:-1] if name == "sigmas" and a[-1] == 0 and len(a) > 1 else a
        lo, hi = min(lo, hi), max(lo, hi)
        tol = 1e-4 * max(abs(hi), 1.0)
        if body.min() < lo - tol or body.max() > hi + tol or (name == "sigmas" and body[-1] <= 0):
            raise ValueError(
                f"`{name}` must lie in [{lo:.6g}, {hi:.6g}] for this schedule"
                f"{' (plus one final 0)' if name == 'sigmas' else ''}, got {a.tolist()}"
            )
        return a

    def _set_grid(self, grid, device=None):
        s = self.schedule
        plan = self.solver.plan(s, grid)
        self._grid, self.plan = grid, plan
        self.num_inference_steps = len(grid) - 1
        labels = s.timestep(plan.eval_times)
        # One noise level per model evaluation, then the end level: sigmas[i] belongs to timesteps[i],
        # as in diffusers (its Heun schedulers repeat levels), since pipelines index sigmas by loop index.
        levels = np.append(plan.eval_times, grid[-1])
        if s.is_flow:
            self.timesteps = torch.from_numpy(labels.astype(np.float32)).to(device)
            self.sigmas = torch.from_numpy(levels.astype(np.float32)).to(device)
        else:
            # Integer labels where the plan evaluates at training timesteps (multistep solvers, whose
            # grids are snapped); float labels where stage times fall between them (Runge-Kutta
            # stages, as diffusers' Heun and KDPM2 schedulers do), so the network sees the exact time.
            integral = np.allclose(labels, np.round(labels), rtol=0, atol=1e-6)
            ts = np.round(labels).astype(np.int64) if integral else labels.astype(np.float32)
            self.timesteps = torch.from_numpy(ts).to(device)
            self.sigmas = torch.from_numpy(s.sigma_ve(levels).astype(np.float32)).to(device)
        self._begin_index = None
        self._step_index = None
        self._reset_run()

    # --- step bookkeeping ------------------------------------------------------------------------

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        schedule_timesteps = self.timesteps if schedule_timesteps is None else schedule_timesteps
        labels = schedule_timesteps.detach().cpu().to(torch.float64)
        t = torch.as_tensor(timestep).detach().cpu().to(torch.float64)
        idx = torch.nonzero(torch.isclose(labels, t, rtol=0, atol=1e-4)).flatten()
        if len(idx) == 0:
            raise ValueError(f"timestep {float(t)} is not in this scheduler's timesteps {labels.tolist()}")
        return int(idx[0])

    def _times_for(self, timestep) -> np.ndarray:
        """Continuous times for diffusers timestep labels (by index into the run when they match)."""
        ts = torch.as_tensor(timestep).detach().cpu().to(torch.float64).reshape(-1).numpy()
        if self.timesteps is not None:
            labels = self.timesteps.detach().cpu().to(torch.float64).numpy()
            out = []
            for v in ts:
                hit = np.flatnonzero(np.abs(labels - v) < 1e-4)
                out.append(self.plan.eval_times[hit[0]] if len(hit) else self.schedule.t_of_timestep(v))
            return np.asarray(out, dtype=np.float64)
        return self.schedule.t_of_timestep(ts)

    def _start_run(self, timestep):
        if self.plan is None:
            raise ValueError("call `set_timesteps` before `step`")
        if self._begin_index is not None:
            self._step_index = self._begin_index
        else:
            self._step_index = self.index_for_timestep(timestep)
        k0 = self._step_index
        if k0 == 0:
            self._run_plan, self._run_offset = self.plan, 0
            return
        j = int(self.plan.step_of_eval[k0])
        if k0 > 0 and int(self.plan.step_of_eval[k0 - 1]) == j:
            raise ValueError(f"cannot start in the middle of a multi-stage step (evaluation {k0})")
        # Starting part-way (img2img): the solver warms up again on the remaining grid.
        self._run_plan, self._run_offset = self.solver.plan(self.schedule, self._grid[j:]), k0

    # --- the contract ----------------------------------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Identity: our solvers work on x_t = alpha x0 + sigma eps, the network's own input."""
        return sample

    def _check_finite(self, model_output: torch.Tensor, k: int, last: bool):
        bad = ~torch.isfinite(model_output).all()
        if model_output.device.type == "cpu":
            if bad:
                raise NonFiniteModelOutput(f"model output is NaN or Inf at step {k}")
            return
        # On an accelerator, record the first bad step without synchronising; check once at the end.
        here = torch.where(bad, k, -1)
        self._bad_step = here if self._bad_step is None else torch.where(self._bad_step >= 0, self._bad_step, here)
        if last and int(self._bad_step) >= 0:
            raise NonFiniteModelOutput(f"model output is NaN or Inf at step {int(self._bad_step)}")

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> FastSchedulerOutput | tuple:
        """One solver step after one model evaluation; output in ``sample``'s dtype.

        ``generator`` is accepted for pipeline compatibility and unused (deterministic ODE solvers).
        """
        if self._step_index is None:
            self._start_run(timestep)
        k = self._step_index
        if k >= self.plan.nfe:
            raise IndexError(
                f"this run ended after its {self.plan.nfe} model evaluations; call `set_timesteps` to start another"
            )
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)}, sample has {tuple(sample.shape)}; "
                "they must match (split off a learned variance before calling step)"
            )
        plan, local = self._run_plan, k - self._run_offset
        t = float(plan.eval_times[local])
        self._check_finite(model_output, k, last=k == self.plan.nfe - 1)
        prev, x0, self._history = advance(
            plan, local, t, model_output, sample, self._history, self.schedule, self.prediction_type, self.steering
        )
        self._step_index = k + 1
        if self._step_index == self.plan.nfe:
            self._history = None
        pred = x0.to(sample.dtype)
        if not return_dict:
            return (prev, pred)
        return FastSchedulerOutput(prev_sample=prev, pred_original_sample=pred)

    def _alpha_sigma(self, timesteps, like: torch.Tensor):
        t = self._times_for(timesteps)
        a = torch.as_tensor(self.schedule.alpha(t), dtype=torch.float32, device=like.device)
        s = torch.as_tensor(self.schedule.sigma(t), dtype=torch.float32, device=like.device)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return a.reshape(shape), s.reshape(shape)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t eps at diffusers timestep labels (one per sample, or one for all)."""
        a, s = self._alpha_sigma(timesteps, original_samples)
        out = a * original_samples.to(torch.float32) + s * noise.to(torch.float32)
        return out.to(original_samples.dtype)

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Forward process as flow pipelines call it (img2img / inpainting); same as ``add_noise``."""
        if noise is None:
            raise ValueError("scale_noise needs `noise`")
        return self.add_noise(sample, noise, timestep)
