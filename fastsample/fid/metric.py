"""torchmetrics metrics: FID and FD-DINOv2 on streaming float64 sums; KID, CMMD, P/R/D/C on stored features.

:class:`FrechetInceptionDistance` has the interface of ``torchmetrics.image.fid.FrechetInceptionDistance``
(``update(imgs, real=...)``, ``compute()``, ``reset()``, ``reset_real_features``, ``feature`` as an int
or any ``nn.Module`` returning (B, F) features, ``normalize``, ``antialias``, ``set_dtype``, ``plot``),
the same error messages and state names, summed across processes; the built-in network never leaves
eval mode. torchmetrics' own FID test cases pass on it (tests/test_fid_torchmetrics_dropin.py).
It differs where torchmetrics has pitfalls: float images are quantised by rounding, not truncation;
TF32 is off during extraction; the distance uses the symmetric float64 form of
:mod:`fastsample.fid.distance`, and the reference side (real set or a statistics file given to
:meth:`set_reference`) is factored once and cached while it does not change.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from .distance import ReferenceStatistics
from .encoders import CLIPEncoder, DINOv2Encoder
from .inception import BLOCK_DIMS, FIDInceptionV3
from .kid import kernel_inception_distance, rbf_mmd2
from .manifold import Reservoir, precision_recall_density_coverage
from .stats import UNKNOWN, FeatureStatistics, accumulate_

__all__ = [
    "CLIPMaximumMeanDiscrepancy",
    "FrechetDINOv2Distance",
    "FrechetInceptionDistance",
    "KernelInceptionDistance",
    "PrecisionRecallDensityCoverage",
]


def _resize_mode(resize: str | None, antialias: bool | None) -> str:
    """The built-in network's resize mode from ``resize`` and torchmetrics' ``antialias`` (None: not given)."""
    if antialias is None:
        return resize or "pytorch-fid"
    mode = "torchmetrics" if antialias else "torch-fidelity"
    if resize is not None and resize != mode:
        raise ValueError(
            f"antialias={antialias} selects resize={mode!r} (torchmetrics' meaning), which conflicts with "
            f"resize={resize!r}; pass only one of them"
        )
    return mode


def _feature_net(feature, weights, resize, antialias, input_range) -> tuple[nn.Module, bool]:
    if isinstance(feature, int) and not isinstance(feature, bool):
        if feature not in BLOCK_DIMS:
            raise ValueError(f"Integer input to argument `feature` must be one of {BLOCK_DIMS}, but got {feature}.")
        net = FIDInceptionV3(weights, dims=feature, resize=_resize_mode(resize, antialias), input_range=input_range)
        return net, False
    if isinstance(feature, nn.Module):
        if resize is not None or antialias is not None:
            raise ValueError(
                "resize= and antialias= configure the built-in Inception; a custom `feature` module "
                "does its own preprocessing"
            )
        return feature, True
    raise TypeError(
        f"Got unknown input to argument `feature`: expected an int {BLOCK_DIMS} or an nn.Module returning (B, F) "
        f"features, got {type(feature).__name__}"
    )


def _num_features(net: nn.Module, num_features: int | None, input_img_size, normalize: bool) -> int:
    if num_features is not None:
        return int(num_features)
    n = getattr(net, "num_features", None)
    if isinstance(n, Tensor):
        return int(n.item())
    if isinstance(n, int):
        return n
    if normalize:
        dummy = torch.rand(1, *input_img_size)
    else:
        dummy = torch.randint(0, 256, (1, *input_img_size), dtype=torch.uint8)
    with torch.no_grad():
        return int(net(dummy).shape[-1])


class _FeatureMetric(Metric):
    """What the image-feature metrics share: the feature network, torchmetrics' input rules, set_dtype, plot."""

    is_differentiable = False
    full_state_update = False

    def _init_network(self, feature, weights, resize, antialias, input_range, normalize) -> None:
        if not isinstance(normalize, bool):
            raise ValueError("Argument `normalize` expected to be a bool")
        self.normalize = normalize
        self.inception, self.used_custom_model = _feature_net(feature, weights, resize, antialias, input_range)

    def _features(self, imgs: Tensor) -> Tensor:
        """(B, F) features of a batch; the built-in network takes uint8, or floats when ``normalize``."""
        if not self.used_custom_model and not self.normalize and imgs.dtype != torch.uint8:
            raise ValueError(
                f"Expecting image as torch.Tensor with dtype=torch.uint8 (got {imgs.dtype}); pass normalize=True "
                "for float images in [0, 1]"
            )
        features = self.inception(imgs)
        return features.unsqueeze(0) if features.ndim == 1 else features

    def set_dtype(self, dst_type: str | torch.dtype) -> _FeatureMetric:
        """Run the feature network in ``dst_type`` (e.g. ``torch.float64``); the metric's states keep their dtype.

        torchmetrics casts its states too; ours are float64 sums that a cast to lower precision would corrupt.
        """
        dtype = getattr(torch, dst_type.removeprefix("torch."), None) if isinstance(dst_type, str) else dst_type
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"set_dtype needs a floating dtype, got {dst_type!r}")
        self.inception.to(dtype)
        return self

    def plot(self, val=None, ax=None):
        """torchmetrics' plot: one value or a sequence of values (default: ``compute()``); returns (fig, ax)."""
        return self._plot(val, ax)


class FrechetInceptionDistance(_FeatureMetric):
    """FID between real and generated images (Heusel et al., arXiv 1706.08500) with float64 streaming sums.

    Args:
        feature: 64, 192, 768 or 2048 for the FID InceptionV3 (:class:`FIDInceptionV3`), or any
            ``nn.Module`` mapping an image batch to (B, F) features (e.g. a small classifier's penultimate layer).
        reset_real_features: whether ``reset()`` also clears the real statistics.
        normalize: as torchmetrics: False, the built-in network takes uint8 images in [0, 255] (floats are
            refused); True, it takes float images in ``input_range`` (quantised by rounding, where torchmetrics
            truncates). A custom module receives the images unchanged; for one without ``num_features``,
            ``normalize`` selects the dtype of the probe image.
        input_img_size: image size (C, H, W) of the probe that infers a custom module's feature dimension.
        feature_extractor_weights_path: Inception weights file (None: the torch hub cache; "random": untrained).
        resize: preprocessing of the built-in network, one of ``RESIZE_MODES`` (default "pytorch-fid").
        antialias: torchmetrics' argument: True is resize "torchmetrics" (its default, antialiased bilinear),
            False is "torch-fidelity" (TF1 bilinear); None (default) leaves the choice to ``resize``.
        input_range: range of float images, (0, 1) or (-1, 1).
        num_features: feature dimension of a custom module (skips the probe).
        **kwargs: passed to ``torchmetrics.Metric``.

    ``compute()`` returns the distance as a float64 0-d tensor. ``train()`` leaves the built-in network in
    eval mode; ``set_dtype`` casts the network, never the float64 sums; ``plot()`` is torchmetrics'.
    """

    higher_is_better = False
    plot_lower_bound = 0.0

    def __init__(
        self,
        feature: int | nn.Module = 2048,
        reset_real_features: bool = True,
        normalize: bool = False,
        input_img_size: tuple[int, int, int] = (3, 299, 299),
        feature_extractor_weights_path: str | os.PathLike | None = None,
        resize: str | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
        num_features: int | None = None,
        antialias: bool | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_network(feature, feature_extractor_weights_path, resize, antialias, input_range, normalize)
        if not isinstance(reset_real_features, bool):
            raise ValueError("Argument `reset_real_features` expected to be a bool")
        self.reset_real_features = reset_real_features
        d = _num_features(self.inception, num_features, input_img_size, normalize)
        self.num_features = d
        for side in ("real", "fake"):
            self.add_state(f"{side}_features_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_features_cov_sum", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_features_num_samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self._fixed_reference: ReferenceStatistics | None = None
        self._ref_key = None
        self._ref_cache: ReferenceStatistics | None = None

    @property
    def identity(self) -> dict:
        """Metadata of the feature network (network name, resize mode, dimension)."""
        if isinstance(getattr(self.inception, "identity", None), dict):
            return self.inception.identity
        return {"feature_network": type(self.inception).__name__, "resize_mode": UNKNOWN, "dim": self.num_features}

    def update(self, imgs: Tensor, real: bool) -> None:
        """Extract features of a batch and add them to the real or the fake sums."""
        if real and self._fixed_reference is not None:
            raise RuntimeError("the real side is fixed by set_reference(); update only with real=False")
        features = self._features(imgs)
        side = "real" if real else "fake"
        accumulate_(
            getattr(self, f"{side}_features_num_samples"),
            getattr(self, f"{side}_features_sum"),
            getattr(self, f"{side}_features_cov_sum"),
            features,
        )

    def _statistics(self, side: str) -> FeatureStatistics:
        meta = self.identity
        s = FeatureStatistics(None, feature_network=meta["feature_network"], resize_mode=meta["resize_mode"])
        s.dim = self.num_features
        s.count = getattr(self, f"{side}_features_num_samples").double()
        s.sum = getattr(self, f"{side}_features_sum")
        s.sum_outer = getattr(self, f"{side}_features_cov_sum")
        return s

    def real_statistics(self) -> FeatureStatistics:
        """The real set's statistics (views of this process's states)."""
        return self._statistics("real")

    def fake_statistics(self) -> FeatureStatistics:
        """The generated set's statistics (views of this process's states)."""
        return self._statistics("fake")

    def set_reference(self, reference: FeatureStatistics | str | os.PathLike) -> None:
        """Fix the real side to precomputed statistics (a :class:`FeatureStatistics` or an ``.npz`` path).

        Checked against this metric's feature network and resize mode; real updates are refused afterwards.
        """
        if not isinstance(reference, FeatureStatistics):
            reference = FeatureStatistics.load(reference)
        reference.check_compatible(self.identity)
        self._fixed_reference = ReferenceStatistics(reference.mean, reference.cov, device=self.device)

    def _reference(self) -> ReferenceStatistics:
        if self._fixed_reference is not None:
            return self._fixed_reference
        n = self.real_features_num_samples
        if int(n) < 2:
            raise RuntimeError("More than one sample is required for both the real and fake distributed to compute FID")
        key = (int(n), float(self.real_features_sum.sum()), float(self.real_features_cov_sum.trace()))
        if self._ref_key != key:
            real = self.real_statistics()
            self._ref_cache, self._ref_key = ReferenceStatistics(real.mean, real.cov), key
        return self._ref_cache

    def compute(self) -> Tensor:
        """FID between the real (or fixed reference) and the generated statistics, float64 0-d tensor."""
        if int(self.fake_features_num_samples) < 2:
            raise RuntimeError("More than one sample is required for both the real and fake distributed to compute FID")
        fake = self.fake_statistics()
        return self._reference().distance_tensor(fake.mean, fake.cov)

    def reset(self) -> None:
        """Reset the states; the real ones only when ``reset_real_features``."""
        if self.reset_real_features:
            super().reset()
            return
        keep = {k: getattr(self, k).clone() for k in self._defaults if k.startswith("real_")}
        super().reset()
        for k, v in keep.items():
            setattr(self, k, v)


class KernelInceptionDistance(_FeatureMetric):
    """KID (Binkowski et al., arXiv 1801.01401) with the interface of torchmetrics' ``KernelInceptionDistance``.

    Stores features (float32, on the metric's device): at most ``max_features`` per side and process
    (default 50,000, i.e. 400 MB at 2048 dims); further features are dropped with a warning.
    ``compute()`` returns (mean, std) over ``subsets`` subsets of ``subset_size`` (std with ddof 1, like
    torchmetrics). Other arguments as :class:`FrechetInceptionDistance`; ``plot()`` shows the mean.
    """

    higher_is_better = False
    plot_lower_bound = 0.0

    def __init__(
        self,
        feature: int | nn.Module = 2048,
        subsets: int = 100,
        subset_size: int = 1000,
        degree: int = 3,
        gamma: float | None = None,
        coef: float = 1.0,
        reset_real_features: bool = True,
        normalize: bool = False,
        feature_extractor_weights_path: str | os.PathLike | None = None,
        resize: str | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
        max_features: int = 50_000,
        seed: int = 0,
        antialias: bool | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_network(feature, feature_extractor_weights_path, resize, antialias, input_range, normalize)
        self.subsets, self.subset_size, self.degree, self.gamma, self.coef = subsets, subset_size, degree, gamma, coef
        self.reset_real_features = reset_real_features
        self.max_features, self.seed = max_features, seed
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, imgs: Tensor, real: bool) -> None:
        """Extract and store the features of a batch (up to ``max_features`` per side)."""
        features = self._features(imgs)
        store = self.real_features if real else self.fake_features
        room = self.max_features - sum(f.shape[0] for f in store)
        if features.shape[0] > room:
            warnings.warn(
                f"KID keeps at most max_features={self.max_features} features per side; dropping "
                f"{features.shape[0] - max(room, 0)}",
                stacklevel=2,
            )
            features = features[: max(room, 0)]
        if features.shape[0]:
            store.append(features.detach().float())

    def compute(self) -> tuple[Tensor, Tensor]:
        """(KID mean, KID std) as float64 0-d tensors."""
        if not len(self.real_features) or not len(self.fake_features):
            raise RuntimeError("KID needs features of both the real and the generated images")
        real = torch.cat(self.real_features) if isinstance(self.real_features, list) else self.real_features
        fake = torch.cat(self.fake_features) if isinstance(self.fake_features, list) else self.fake_features
        g = torch.Generator().manual_seed(self.seed)
        mean, std = kernel_inception_distance(
            real, fake, self.subsets, self.subset_size, self.degree, self.gamma, self.coef, generator=g, ddof=1
        )
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)

    def reset(self) -> None:
        """Reset the stored features; the real ones only when ``reset_real_features``."""
        keep = list(self.real_features) if not self.reset_real_features else None
        super().reset()
        if keep is not None:
            self.real_features = keep

    def plot(self, val=None, ax=None):
        """torchmetrics' plot of the KID mean (default: ``compute()[0]``); returns (fig, ax)."""
        return self._plot(self.compute()[0] if val is None else val, ax)


class FrechetDINOv2Distance(FrechetInceptionDistance):
    """FD-DINOv2: the Frechet distance of DINOv2 CLS features (dgm-eval conventions, :class:`DINOv2Encoder`).

    Args:
        model: ``save_pretrained`` folder or hub id of a ``Dinov2Model`` (default ``facebook/dinov2-large``).
        download: let ``from_pretrained`` download the model into the Hugging Face cache.
        **kwargs: as :class:`FrechetInceptionDistance` (``reset_real_features``, ``num_features``, ...).
    """

    def __init__(self, model: str | os.PathLike = "facebook/dinov2-large", download: bool = False, **kwargs):
        super().__init__(feature=DINOv2Encoder(model, download=download), **kwargs)


class _SampledFeatureMetric(_FeatureMetric):
    """Metrics on the features themselves: a seeded uniform subsample of at most ``max_samples`` per side.

    States ``real_features`` / ``fake_features`` (lists, concatenated across processes) hold each process's
    :class:`Reservoir`; after a sync, more than ``max_samples`` rows are subsampled again with ``seed``.
    """

    def _init_sampling(self, max_samples: int, seed: int, reset_real_features: bool) -> None:
        if not isinstance(reset_real_features, bool):
            raise ValueError("Argument `reset_real_features` expected to be a bool")
        self.max_samples, self.seed, self.reset_real_features = int(max_samples), int(seed), reset_real_features
        self._reservoirs = {side: Reservoir(max_samples, seed + i) for i, side in enumerate(("real", "fake"))}
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, imgs: Tensor, real: bool) -> None:
        """Extract the features of a batch and offer them to the side's reservoir."""
        side = "real" if real else "fake"
        reservoir = self._reservoirs[side]
        reservoir.add(self._features(imgs).detach().float())
        setattr(self, f"{side}_features", [reservoir.rows])

    def _sample(self, side: str) -> Tensor:
        rows = getattr(self, f"{side}_features")
        x = torch.cat(rows) if isinstance(rows, list) and rows else rows
        if isinstance(x, list) or x.shape[0] < 2:
            raise RuntimeError(f"{type(self).__name__} needs at least 2 {side} images")
        if x.shape[0] > self.max_samples:
            g = torch.Generator().manual_seed(self.seed)
            x = x[torch.randperm(x.shape[0], generator=g)[: self.max_samples].to(x.device)]
        return x

    @property
    def subsampled(self) -> bool:
        """Whether either side saw more than ``max_samples`` images (the result is on a subsample)."""
        return any(r.subsampled for r in self._reservoirs.values())

    def reset(self) -> None:
        """Reset the samples; the real one only when ``reset_real_features``."""
        keep = list(self.real_features) if not self.reset_real_features else None
        super().reset()
        self._reservoirs["fake"].reset()
        if keep is None:
            self._reservoirs["real"].reset()
        else:
            self.real_features = keep


class PrecisionRecallDensityCoverage(_SampledFeatureMetric):
    """Precision/recall (arXiv 1904.06991) and density/coverage (arXiv 2002.09797) with k nearest neighbours.

    Computed on a seeded uniform subsample of at most ``max_samples`` features per side (default 10,000,
    as both papers use), see :mod:`fastsample.fid.manifold`. ``compute()`` returns a dict of four float64
    0-d tensors. Other arguments as :class:`FrechetInceptionDistance` (default features: Inception pool3).
    """

    higher_is_better = True
    plot_lower_bound = 0.0

    def __init__(
        self,
        feature: int | nn.Module = 2048,
        k: int = 5,
        max_samples: int = 10_000,
        seed: int = 0,
        reset_real_features: bool = True,
        normalize: bool = False,
        feature_extractor_weights_path: str | os.PathLike | None = None,
        resize: str | None = None,
        antialias: bool | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._init_network(feature, feature_extractor_weights_path, resize, antialias, input_range, normalize)
        self._init_sampling(max_samples, seed, reset_real_features)
        self.k = int(k)

    def compute(self) -> dict[str, Tensor]:
        """{"precision", "recall", "density", "coverage"} as float64 0-d tensors."""
        out = precision_recall_density_coverage(self._sample("real"), self._sample("fake"), self.k)
        return {key: torch.tensor(v, dtype=torch.float64) for key, v in out.items()}


class CLIPMaximumMeanDiscrepancy(_SampledFeatureMetric):
    """CMMD (arXiv 2401.09603): 1000 x MMD^2 of unit-norm CLIP image embeddings, Gaussian RBF kernel, sigma 10.

    Args:
        model: ``save_pretrained`` folder or hub id of a ``CLIPVisionModelWithProjection`` (default the
            paper's ``openai/clip-vit-large-patch14-336``), or any ``nn.Module`` returning (B, F) embeddings.
        unbiased: the U-statistic (default); False gives the paper code's V-statistic (:func:`rbf_mmd2`).
        max_samples: features kept per side (seeded uniform subsample beyond it; default 30,000).
        download: let ``from_pretrained`` download the model into the Hugging Face cache.

    ``compute()`` returns a float64 0-d tensor.
    """

    higher_is_better = False
    plot_lower_bound = 0.0

    def __init__(
        self,
        model: str | os.PathLike | nn.Module = "openai/clip-vit-large-patch14-336",
        unbiased: bool = True,
        max_samples: int = 30_000,
        seed: int = 0,
        reset_real_features: bool = True,
        download: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        net = model if isinstance(model, nn.Module) else CLIPEncoder(model, download=download)
        self._init_network(net, None, None, None, (0.0, 1.0), False)
        self._init_sampling(max_samples, seed, reset_real_features)
        self.unbiased = unbiased

    def compute(self) -> Tensor:
        """CMMD as a float64 0-d tensor."""
        return rbf_mmd2(self._sample("real"), self._sample("fake"), unbiased=self.unbiased)
