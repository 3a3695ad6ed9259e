"""FlowChef: gradient-skipping steering of a flow's vector field (Patel et al., arXiv 2412.00100).

At a model evaluation at time t with velocity v (diffusers' flow convention, x = (1 - t) x0 + t eps,
v = eps - x0) the data estimate is x0_hat = x - t v. FlowChef holds v fixed and, for K inner
iterations, moves the state along the gradient of a loss of x0_hat,

    x <- x - eta * grad_{x0_hat} L(x0_hat),     x0_hat = x - t v,

(gradient skipping: no backpropagation through the model, so memory stays at plain-inference
level), then the ordinary solver step runs with the velocity from before the update: the
steering returns the new x with x0 = x - t v and eps = x + (1 - t) v. With Adam the update is
Adam's step on the same gradient.

:class:`FlowChef` is a steering hook ``(k, t, x, x0, eps) -> (x, x0, eps)``: attach it to any flow
scheduler of ours with ``scheduler.steering = FlowChef(...)`` (or ``FlowChef(...).attach(scheduler)``,
which checks the schedule) or pass it to :func:`fastsample.solvers.sampling.sample`. It refuses a non-flow
(VP) run: there x != (1 - t) x0 + t eps.

With a Runge-Kutta solver the update only matters at the first stage of a step (later stages
feed the step through their velocity alone, which FlowChef holds fixed); the multistep and
Euler updates use every steered evaluation.

Losses return one value per sample, shape (B,), and are summed over the batch, so a sample's update
does not depend on the batch size. Built-in tasks (each a loss, float32 arithmetic):

- :class:`Inpainting` (box: :func:`box_mask`; free-form: any mask), 0.5 sum mask (x0 - y)^2.
- :class:`SuperResolution`: average pooling by any integer factor, 0.5 f^2 sum (pool(x0) - y)^2.
- :class:`Deblurring`: Gaussian blur (odd kernel size, reflect padding), 0.5 sum (blur(x0) - y)^2.
- :class:`ClassifierGuidance`: cross-entropy of any differentiable classifier on x0_hat.
- Latent models: the same tasks on latents (:func:`latent_mask` brings a pixel mask to latent
  resolution), or :class:`Decoded`, which applies a pixel-space task to ``decode(x0_hat)``; the
  gradient then flows through the VAE decoder only.

Defaults follow the paper's pixel-model setting (Euler, K = 1, SGD, every step): its step of 500 on a
mean-reduced squared error over a 3x64x64 image is eta = 2 * 500 / 12288 ~ 0.08 on our per-sample
0.5-sum loss. The paper's latent editing setting (K = 3, first 5 steps, SGD) is
``FlowChef(loss, iterations=3, steps=5, lr=...)``; InstaFlow's uses Adam (lr 0.05, K = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

__all__ = [
    "FlowChef",
    "FlowChefLossError",
    "Inpainting",
    "SuperResolution",
    "Deblurring",
    "ClassifierGuidance",
    "Decoded",
    "box_mask",
    "latent_mask",
]

_OPTIMIZERS = ("sgd", "adam")


class FlowChefLossError(FloatingPointError, ValueError):
    """A FlowChef loss returned NaN or Inf."""


def _check_measurement(name: str, y: torch.Tensor, want: tuple, batch: int):
    """``y`` must have shape ``(B,) + want`` or ``(1,) + want``."""
    if tuple(y.shape[1:]) != tuple(want) or y.shape[0] not in (1, batch):
        raise ValueError(f"{name} has shape {tuple(y.shape)}, expected ({batch} or 1, {', '.join(map(str, want))})")


def _per_sample(r: torch.Tensor) -> torch.Tensor:
    return 0.5 * r.reshape(len(r), -1).square().sum(1)


class Inpainting:
    """Inpainting loss 0.5 sum mask * (x0 - y)^2 per sample.

    Args:
        measurement: (B or 1, *shape) the observed image or latent (values under mask 0 ignored).
        mask: broadcastable to (B, *shape); 1 where observed, 0 where missing (any float in [0, 1]).
    """

    def __init__(self, measurement: torch.Tensor, mask: torch.Tensor):
        self.y, self.mask = measurement, mask

    def check(self, x: torch.Tensor):
        _check_measurement("inpainting measurement", self.y, x.shape[1:], len(x))
        shape = tuple(self.mask.shape)
        try:
            fits = torch.broadcast_shapes(shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"inpainting mask has shape {shape}; it does not broadcast to the sample {tuple(x.shape)}")

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        m = self.mask.to(x0)
        return _per_sample(m * (x0 - self.y.to(x0)))


def box_mask(shape, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """A (1, 1, H, W) float32 mask for ``shape = (..., H, W)``: 0 inside the box (missing), 1 outside."""
    h, w = shape[-2], shape[-1]
    if not (0 <= top < top + height <= h and 0 <= left < left + width <= w):
        raise ValueError(f"box ({top}, {left}, {height}, {width}) does not fit in a {h}x{w} image")
    m = torch.ones(1, 1, h, w)
    m[..., top : top + height, left : left + width] = 0
    return m


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """A pixel mask (1, 1, H, W) brought to latent resolution by area averaging, then thresholded (0/1)."""
    m = F.interpolate(mask.float(), size=tuple(latent_hw), mode="area")
    return (m > threshold).float()


class SuperResolution:
    """Super-resolution loss: average pooling by ``factor`` f (any integer), 0.5 f^2 sum (pool(x0) - y)^2.

    The f^2 makes the gradient the nearest-neighbour upsampled residual, so with SGD ``lr = 1``
    projects x0_hat onto the measurement exactly, as for :class:`Inpainting`.

    Args:
        measurement: (B or 1, C, H / factor, W / factor) low-resolution image.
        factor: integer downsampling factor; H and W must be divisible by it.
    """

    def __init__(self, measurement: torch.Tensor, factor: int):
        if int(factor) != factor or factor < 1:
            raise ValueError(f"super-resolution factor must be a positive integer, got {factor}")
        self.y, self.factor = measurement, int(factor)

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.factor)

    def check(self, x: torch.Tensor):
        if x.ndim != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"super-resolution by {self.factor} needs (B, C, H, W) with H, W divisible, got {tuple(x.shape)}"
            )
        c, h, w = x.shape[1], x.shape[2] // self.factor, x.shape[3] // self.factor
        _check_measurement("super-resolution measurement", self.y, (c, h, w), len(x))

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        return _per_sample(self.factor * (self.degrade(x0) - self.y.to(x0)))


class Deblurring:
    """Gaussian deblurring loss: 0.5 sum (blur(x0) - y)^2, blur per channel with reflect padding.

    Args:
        measurement: (B or 1, C, H, W) blurred image.
        kernel_size: odd kernel size; sigma: the Gaussian's standard deviation in pixels.
    """

    def __init__(self, measurement: torch.Tensor, kernel_size: int = 11, sigma: float = 1.0):
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        r = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
        k = torch.exp(-0.5 * (r / sigma) ** 2)
        self.kernel1d = (k / k.sum()).float()
        self.y, self.kernel_size = measurement, kernel_size

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        c, p = x.shape[1], self.kernel_size // 2
        k = self.kernel1d.to(x)
        x = F.pad(x, (p, p, p, p), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    def check(self, x: torch.Tensor):
        if x.ndim != 4:
            raise ValueError(f"deblurring needs (B, C, H, W) samples, got {tuple(x.shape)}")
        _check_measurement("deblurring measurement", self.y, x.shape[1:], len(x))

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        return _per_sample(self.degrade(x0) - self.y.to(x0))


class ClassifierGuidance:
    """Classifier guidance on x0_hat: ``scale`` times the cross-entropy of ``classifier(x0_hat)`` for ``target``.

    Args:
        classifier: any differentiable module or function, (B, *shape) -> (B, num_classes) logits.
        target: int class or (B,) int64 classes.
        scale: multiplies the loss (the guidance strength, together with the step size).
    """

    def __init__(self, classifier: Callable, target, scale: float = 1.0):
        self.classifier, self.target, self.scale = classifier, target, float(scale)

    def check(self, x: torch.Tensor):
        t = torch.as_tensor(self.target)
        if t.ndim > 1 or (t.ndim == 1 and len(t) not in (1, len(x))):
            raise ValueError(f"target must be an int or {len(x)} class indices, got shape {tuple(t.shape)}")

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(x0)
        target = torch.as_tensor(self.target, device=logits.device, dtype=torch.long).expand(len(x0))
        return self.scale * F.cross_entropy(logits.float(), target, reduction="none")


class Decoded:
    """A pixel-space task applied through a decoder: ``task(decode(x0_hat))`` (gradient through the decoder only).

    Args:
        task: a pixel-space loss (``Inpainting``, ``SuperResolution``, ``ClassifierGuidance``, ...).
        decode: latents (B, *latent_shape) -> images (B, C, H, W), e.g. a VAE decoder call.
    """

    def __init__(self, task: Callable, decode: Callable):
        self.task, self.decode = task, decode

    def check(self, x: torch.Tensor):
        return None

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        img = self.decode(x0)
        if hasattr(self.task, "check"):
            self.task.check(img)
        return self.task(img)


class FlowChef:
    """The FlowChef steering hook (see the module docstring).

    Args:
        loss: a task from this module or any callable x0_hat (B, *shape) -> per-sample loss (B,)
            (a scalar is accepted too); optionally with ``check(x)`` validating shapes.
        lr: step size eta (SGD) or Adam's learning rate.
        iterations: K, inner gradient steps per steered evaluation.
        steps: which model evaluations are steered: None (all), an int n (the first n), an
            iterable of evaluation indices, or a callable ``(k, t) -> bool``.
        optimizer: ``"sgd"`` or ``"adam"`` (a fresh Adam state at every steered evaluation).
        check_flow: verify x = (1 - t) x0 + t eps at each call (refuses VP schedulers).
    """

    def __init__(
        self,
        loss: Callable,
        lr: float = 0.08,
        iterations: int = 1,
        steps: int | Iterable[int] | Callable | None = None,
        optimizer: str = "sgd",
        check_flow: bool = True,
    ):
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(_OPTIMIZERS)}")
        if int(iterations) != iterations or iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {iterations}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.loss, self.lr, self.iterations, self.optimizer = loss, float(lr), int(iterations), optimizer
        self.check_flow = check_flow
        if steps is None or callable(steps):
            self._active = steps
        elif isinstance(steps, int):
            self._active = lambda k, t, n=steps: k < n
        else:
            chosen = frozenset(int(s) for s in steps)
            self._active = lambda k, t: k in chosen
        self.last_loss = None

    def attach(self, scheduler):
        """Set ``scheduler.steering = self`` after checking that the scheduler samples a flow."""
        schedule = getattr(scheduler, "schedule", None)
        if schedule is None or not getattr(schedule, "is_flow", False):
            raise ValueError(
                f"FlowChef steers flow models only; {type(scheduler).__name__} is not running a flow schedule "
                "(use RectifiedFlowScheduler or a scheduler with use_flow_sigmas=True)"
            )
        scheduler.steering = self
        return scheduler

    def is_active(self, k: int, t: float) -> bool:
        return self._active is None or bool(self._active(k, t))

    def _check_flow(self, t, x, x0, eps):
        resid = (x - ((1.0 - t) * x0 + t * eps)).abs().max()
        if resid > 1e-3 * (1.0 + x.abs().max()):
            raise ValueError(
                "FlowChef steers flow models only: this run is not a flow (x != (1 - t) x0 + t eps at "
                f"t={t:.4g}); attach it to a flow scheduler such as RectifiedFlowScheduler, not a VP one"
            )

    def __call__(self, k: int, t: float, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor):
        if self.check_flow:
            self._check_flow(t, x, x0, eps)
        if not self.is_active(k, t):
            return x, x0, eps
        if hasattr(self.loss, "check"):
            self.loss.check(x)
        v = (eps - x0).detach()
        with torch.enable_grad():
            z = x.detach().clone().requires_grad_(True)
            opt = (torch.optim.SGD if self.optimizer == "sgd" else torch.optim.Adam)([z], lr=self.lr)
            for _ in range(self.iterations):
                loss = self.loss(z - t * v).sum()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FlowChefLossError(f"FlowChef loss is {value} at evaluation {k} (t={t:.4g})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.last_loss = value
        x = z.detach()
        return x, x - t * v, x + (1.0 - t) * v
