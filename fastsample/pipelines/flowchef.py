"""FlowChef-steered SD3 and Flux pipelines (Patel et al., arXiv 2412.00100).

The steering lives in the scheduler (:class:`fastsample.steering.flowchef.FlowChef` as ``scheduler.steering``),
so these subclasses keep Diffusers' sampling loops untouched and add:

- ``__call__(..., flowchef=...)``: run the ordinary pipeline with a :class:`FlowChef` attached for
  this call. A Diffusers ``FlowMatchEulerDiscreteScheduler`` is replaced for the call by
  :class:`~fastsample.schedulers.RectifiedFlowScheduler` with ``solver="euler"`` (the same update on
  the same sigmas), since only our schedulers run steering hooks.
- ``make_flowchef(task, image, mask=..., ...)``: the FlowChef object for an inverse problem or a
  mask-based edit from a source image:

  * ``"inpainting"``: keep the pixels where ``mask`` is 1. ``space="latent"`` compares latents
    (mask brought to latent resolution), ``space="pixel"`` compares decoded images (gradient
    through the VAE decoder only).
  * ``"super_resolution"`` (``image`` is the low-resolution image, ``factor``) and ``"deblurring"``
    (``image`` is the blurred image, ``kernel_size``, ``blur_sigma``): pixel space.
  * ``"edit"``: ``mask`` is 1 where the prompt may change the source image; the rest is held to the
    source latents during the first ``steps`` evaluations (the paper's editing setting: K = 3 SGD
    iterations on the first 5 steps).

Images are PIL images, arrays or tensors accepted by Diffusers' ``VaeImageProcessor`` (values in
[0, 1]); masks are (H, W) or (1, 1, H, W) tensors or arrays at the output resolution.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from ..schedulers.adapter import FastScheduler
from ..schedulers.rectified_flow import RectifiedFlowScheduler
from ..steering.flowchef import Deblurring, Decoded, FlowChef, Inpainting, SuperResolution, latent_mask
from .base import FolderCodeMixin

__all__ = ["FlowChefStableDiffusion3Pipeline", "FlowChefFluxPipeline", "TASKS"]

TASKS = ("inpainting", "super_resolution", "deblurring", "edit")


def _mask_tensor(mask, height: int, width: int) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).float()
    m = m.reshape(1, 1, *m.shape[-2:]) if m.ndim in (2, 3, 4) else m
    if tuple(m.shape[-2:]) != (height, width):
        raise ValueError(f"mask has shape {tuple(m.shape)}, expected (1, 1, {height}, {width}) or ({height}, {width})")
    return m


class _FlowChefMixin:
    """Shared by the SD3 and Flux subclasses; they define ``_to_model_layout`` and ``_from_model_layout``."""

    def _size(self, height, width):
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        return int(height), int(width)

    def _encode(self, image, height: int, width: int) -> torch.Tensor:
        """Latents of ``image`` in the transformer's layout (before packing), float32, mean of the posterior."""
        vae = self.vae
        pixels = self.image_processor.preprocess(image, height=height, width=width)
        with torch.no_grad():
            z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
        return ((z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor).float()

    def _decoder(self, height: int, width: int):
        vae = self.vae

        def decode(latents: torch.Tensor) -> torch.Tensor:
            z = self._from_model_layout(latents, height, width) / vae.config.scaling_factor
            z = z + (vae.config.shift_factor or 0.0)
            return vae.decode(z.to(vae.dtype)).sample.float()

        return decode

    def make_flowchef(
        self,
        task: str,
        image,
        mask=None,
        space: str = "latent",
        factor: int = 4,
        kernel_size: int = 11,
        blur_sigma: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        **flowchef_kwargs,
    ) -> FlowChef:
        """A :class:`FlowChef` for ``task`` (one of ``TASKS``); ``flowchef_kwargs`` go to FlowChef (lr, steps, ...)."""
        if task not in TASKS:
            raise ValueError(f"unknown FlowChef task {task!r}; allowed: {', '.join(TASKS)}")
        if space not in ("latent", "pixel"):
            raise ValueError(f"space must be 'latent' or 'pixel', got {space!r}")
        height, width = self._size(height, width)
        if task in ("inpainting", "edit"):
            if mask is None:
                raise ValueError(f"FlowChef task {task!r} needs a mask")
            keep = _mask_tensor(mask, height, width)
            if task == "edit":
                keep = 1.0 - keep
                flowchef_kwargs = {"iterations": 3, "steps": 5, "lr": 0.5, **flowchef_kwargs}
            if space == "latent" or task == "edit":
                source = self._encode(image, height, width)
                m = latent_mask(keep, source.shape[-2:]).expand(1, source.shape[1], -1, -1)
                loss = Inpainting(self._to_model_layout(source), self._to_model_layout(m.contiguous()))
            else:
                pixels = self.image_processor.preprocess(image, height=height, width=width).float()
                loss = Decoded(Inpainting(pixels, keep), self._decoder(height, width))
        elif task == "super_resolution":
            low = self.image_processor.preprocess(image, height=height // factor, width=width // factor).float()
            loss = Decoded(SuperResolution(low, factor), self._decoder(height, width))
        else:
            blurred = self.image_processor.preprocess(image, height=height, width=width).float()
            loss = Decoded(Deblurring(blurred, kernel_size, blur_sigma), self._decoder(height, width))
        return FlowChef(loss, **flowchef_kwargs)

    def _call_with_flowchef(self, parent_call, args, kwargs, flowchef):
        if flowchef is None:
            return parent_call(self, *args, **kwargs)
        original = self.scheduler
        sched = original
        if not isinstance(sched, FastScheduler):
            sched = RectifiedFlowScheduler.from_config(original.config, solver="euler")
        flowchef.attach(sched)
        self.scheduler = sched
        try:
            return parent_call(self, *args, **kwargs)
        finally:
            sched.steering = None
            self.scheduler = original


class FlowChefStableDiffusion3Pipeline(FolderCodeMixin, _FlowChefMixin, StableDiffusion3Pipeline):
    """``StableDiffusion3Pipeline`` with ``flowchef=`` in ``__call__`` and :meth:`make_flowchef`."""

    def _to_model_layout(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def _from_model_layout(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return latents

    def __call__(self, *args, flowchef: FlowChef | None = None, **kwargs):
        return self._call_with_flowchef(StableDiffusion3Pipeline.__call__, args, kwargs, flowchef)


class FlowChefFluxPipeline(FolderCodeMixin, _FlowChefMixin, FluxPipeline):
    """``FluxPipeline`` with ``flowchef=`` in ``__call__`` and :meth:`make_flowchef` (packed 2x2 latents)."""

    def _to_model_layout(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape
        return self._pack_latents(latents, b, c, h, w)

    def _from_model_layout(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self._unpack_latents(latents, height, width, self.vae_scale_factor)

    def __call__(self, *args, flowchef: FlowChef | None = None, **kwargs):
        return self._call_with_flowchef(FluxPipeline.__call__, args, kwargs, flowchef)
