"""An unconditional pixel-space rectified-flow pipeline (Liu et al., arXiv 2209.03003).

The UNet predicts the velocity v = eps - x0 at x_t = (1 - t) x0 + t eps, with timestep label
1000 * t (diffusers' flow convention). The pipeline drives its scheduler exactly as diffusers'
SD3 and Flux pipelines do: ``set_timesteps`` (passing ``sigmas`` when given), then one
``scheduler.step(model_output, t, sample)`` per timestep, so ``FlowMatchEulerDiscreteScheduler``
or any drop-in flow scheduler can be swapped in.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .base import FolderCodeMixin

__all__ = ["RectifiedFlowPipeline"]


class RectifiedFlowPipeline(FolderCodeMixin, DiffusionPipeline):
    """Unconditional image generation with a velocity-predicting ``UNet2DModel``.

    Components:
        unet: ``UNet2DModel`` mapping (x_t, 1000 * t) to v = eps - x0.
        scheduler: a flow scheduler (``FlowMatchEulerDiscreteScheduler`` or compatible).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def _set_timesteps(self, num_inference_steps, sigmas, device):
        accepted = set(inspect.signature(self.scheduler.set_timesteps).parameters)
        if sigmas is not None:
            if "sigmas" not in accepted:
                raise ValueError(f"{self.scheduler.__class__.__name__}.set_timesteps does not accept custom sigmas.")
            self.scheduler.set_timesteps(sigmas=list(sigmas), device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        return self.scheduler.timesteps

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        sigmas: list[float] | None = None,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images.

        Args:
            num_inference_steps: number of scheduler steps (ignored when ``sigmas`` is given).
            generator: torch generator(s) for the initial noise (and stochastic schedulers).
            output_type: ``"pil"`` (list of PIL images), ``"np"`` ((B, H, W, C) float32 in [0, 1])
                or ``"pt"`` ((B, C, H, W) tensor in [0, 1]).
            sigmas: optional decreasing noise levels passed to ``scheduler.set_timesteps(sigmas=...)``.
        """
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *size)
        device = self._execution_device
        sample = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        sample = sample * getattr(self.scheduler, "init_noise_sigma", 1.0)

        timesteps = self._set_timesteps(num_inference_steps, sigmas, device)
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator
        for t in self.progress_bar(timesteps):
            timestep = t.expand(sample.shape[0]).to(device)
            model_output = self.unet(sample, timestep).sample
            sample = self.scheduler.step(model_output, t, sample, **step_kwargs, return_dict=False)[0]

        image = (sample / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
