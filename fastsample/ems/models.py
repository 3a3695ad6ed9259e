"""``model_fn(x, timestep)`` wrappers for :func:`~.estimation.compute_ems`: exact mixture, UNet, VAE latents."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.model import guide
from ..core.schedules import DiscreteVP, schedule_for_config

# --- model wrappers -------------------------------------------------------------------------------------


def analytic_model_fn(mixture, scheduler_config) -> Callable:
    """The exact model of a :class:`~fastsample.core.analytic.GaussianMixture` as ``model_fn(x, timestep)``.

    Differentiable in x and in the timestep label (alpha and sigma computed in torch from the
    schedule's log-alpha, piecewise linear in t for a discrete schedule), so EMS can be computed for it.
    """
    from ..core.parameterization import from_x0_eps

    schedule, ptype = schedule_for_config(scheduler_config)
    if isinstance(schedule, DiscreteVP):
        tn = torch.as_tensor(schedule.t_nodes)
        la = torch.as_tensor(schedule.log_alpha_nodes)

        def log_alpha(t):
            i = torch.clamp(torch.searchsorted(tn, t.detach(), right=True) - 1, 0, len(tn) - 2)
            return la[i] + (t - tn[i]) * (la[i + 1] - la[i]) / (tn[i + 1] - tn[i])

        def alpha_sigma(ts):
            lg = log_alpha((ts.to(torch.float64) + 1.0) / schedule.num_train_timesteps)
            return torch.exp(lg), torch.sqrt(-torch.expm1(2 * lg))
    else:

        def alpha_sigma(ts):
            t = ts.to(torch.float64) / schedule.num_train_timesteps
            return 1 - t, t

    def model_fn(x, timestep):
        a, s = alpha_sigma(timestep)
        a, s = a[:, None], s[:, None]
        xf = x.reshape(len(x), -1).to(torch.float64)
        x0 = mixture.denoise_ve(xf / a, s / a)
        eps = (xf - a * x0) / s
        return from_x0_eps(x0, eps, a, s, ptype).reshape(x.shape).to(x.dtype)

    return model_fn


def unet_model_fn(
    unet, encoder_hidden_states=None, negative_encoder_hidden_states=None, guidance_scale: float = 1.0, **extra
):
    """``model_fn(x, timestep)`` for a diffusers UNet: ``UNet2DModel`` (no conditioning) or an SD/SDXL
    ``UNet2DConditionModel`` with classifier-free guidance eps_u + w (eps_c - eps_u) at ``guidance_scale``.

    ``encoder_hidden_states`` (P, seq, dim) are cycled over the batch; SDXL's ``added_cond_kwargs`` go in
    ``extra`` as ``added_cond_kwargs`` / ``negative_added_cond_kwargs`` dicts of (P, ...) tensors.
    """

    def rows(t, b):
        return t[torch.arange(b, device=t.device) % len(t)]

    def model_fn(x, timestep):
        if encoder_hidden_states is None:
            return unet(x, timestep).sample
        b = len(x)
        cond = rows(encoder_hidden_states, b)
        add = extra.get("added_cond_kwargs")
        add_c = None if add is None else {k: rows(v, b) for k, v in add.items()}
        if guidance_scale == 1.0:
            return unet(x, timestep, encoder_hidden_states=cond, added_cond_kwargs=add_c).sample
        unc = rows(negative_encoder_hidden_states, b)
        nadd = extra.get("negative_added_cond_kwargs")
        add_in = None
        if add_c is not None:
            add_in = {k: torch.cat([rows(nadd[k], b), add_c[k]]) for k in add_c}
        out = unet(
            torch.cat([x, x]),
            torch.cat([timestep, timestep]),
            encoder_hidden_states=torch.cat([unc, cond]),
            added_cond_kwargs=add_in,
        ).sample
        eu, ec = out.chunk(2)
        return guide(eu, ec, guidance_scale)

    return model_fn


@torch.no_grad()
def vae_latents(vae, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Latents (mean of the posterior, times the VAE's scaling factor) of images in [-1, 1], (N, 3, H, W)."""
    dev = next(vae.parameters()).device
    dt = next(vae.parameters()).dtype
    out = []
    for i in range(0, len(images), batch_size):
        z = vae.encode(images[i : i + batch_size].to(dev, dt)).latent_dist.mean
        out.append((z * vae.config.scaling_factor).float().cpu())
    return torch.cat(out)

