"""FID evaluation engine: the FID InceptionV3, streaming float64 statistics, Frechet distance, KID and IS.

- :mod:`.distance`: :func:`frechet_distance` and the cached :class:`ReferenceStatistics`.
- :mod:`.inception`: :class:`FIDInceptionV3` with pytorch-fid / clean-fid / torch-fidelity preprocessing.
- :mod:`.stats`: :class:`FeatureStatistics` (float64 sums, merge, all-reduce, ``.npz`` files).
- :mod:`.kid`: kernel inception distance, Inception Score and CMMD's RBF MMD.
- :mod:`.manifold`: precision/recall, density/coverage and the seeded feature subsample they use.
- :mod:`.bootstrap`: per-sample error against a reference solution and bootstrap intervals (FD included).
- :mod:`.encoders`: DINOv2 (FD-DINOv2) and CLIP (CMMD) encoders loaded with ``from_pretrained``.
- :mod:`.suite`: several metrics in one pass, each encoder run once per batch.
- :mod:`.metric`: torchmetrics metrics (imported on first use: torchmetrics is slow to import).
- :mod:`.cli`: the ``fastsample fid`` command.
"""

from .distance import ReferenceStatistics, centred_factor, frechet_distance, frechet_distance_features, sqrtm_psd
from .inception import RESIZE_MODES, FIDInceptionV3, find_weights, images_to_uint8
from .kid import inception_score, kernel_inception_distance, poly_mmd2, rbf_mmd2
from .manifold import precision_recall_density_coverage
from .stats import FeatureStatistics, fid_from_statistics

__all__ = [
    "RESIZE_MODES",
    "CLIPEncoder",
    "CLIPMaximumMeanDiscrepancy",
    "DINOv2Encoder",
    "FrechetDINOv2Distance",
    "PrecisionRecallDensityCoverage",
    "FIDInceptionV3",
    "FeatureStatistics",
    "FrechetInceptionDistance",
    "KernelInceptionDistance",
    "ReferenceStatistics",
    "centred_factor",
    "fid_from_statistics",
    "find_weights",
    "frechet_distance",
    "frechet_distance_features",
    "images_to_uint8",
    "inception_score",
    "kernel_inception_distance",
    "poly_mmd2",
    "precision_recall_density_coverage",
    "rbf_mmd2",
    "sqrtm_psd",
]

_LAZY = {
    name: ".metric"
    for name in (
        "CLIPMaximumMeanDiscrepancy",
        "FrechetDINOv2Distance",
        "FrechetInceptionDistance",
        "KernelInceptionDistance",
        "PrecisionRecallDensityCoverage",
    )
}
_LAZY.update(CLIPEncoder=".encoders", DINOv2Encoder=".encoders")


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
