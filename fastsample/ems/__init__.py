"""Computing empirical model statistics (EMS) for DPM-Solver-v3 (Zheng et al., arXiv 2310.13268): an app.

- :mod:`.estimation`: :func:`compute_ems`.
- :mod:`.validation`: :func:`summary`, :func:`validate_ems` (held-out check), :func:`validation_text`.
- :mod:`.models`: ``model_fn`` wrappers (exact mixture, UNet, VAE latents).
- :mod:`.cli`: the ``fastsample ems`` command.

The file format and its checks are :mod:`fastsample.formats.ems_file` (the scheduler reads it).
"""

from .estimation import compute_ems
from .models import analytic_model_fn, unet_model_fn, vae_latents
from .validation import summary, validate_ems, validation_text

__all__ = [
    "compute_ems",
    "summary",
    "validate_ems",
    "validation_text",
    "analytic_model_fn",
    "unet_model_fn",
    "vae_latents",
]
