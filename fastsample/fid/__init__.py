"""FID evaluation engine: the FID InceptionV3, streaming float64 statistics, Frechet distance, KID and IS.

- :mod:`.distance`: :func:`frechet_distance` and the cached :class:`ReferenceStatistics`.
- :mod:`.inception`: :class:`FIDInceptionV3` with pytorch-fid / clean-fid / torch-fidelity preprocessing.
- :mod:`.stats`: :class:`FeatureStatistics` (float64 sums, merge, all-reduce, ``.npz`` files).
- :mod:`.kid`: kernel inception distance and Inception Score.
- :mod:`.metric`: torchmetrics metrics (imported lazily: torchmetrics is slow to import).
- :mod:`.cli`: the ``fastsample fid`` command.
"""

from .distance import ReferenceStatistics, frechet_distance, sqrtm_psd
from .inception import RESIZE_MODES, FIDInceptionV3, find_weights, images_to_uint8
from .stats import FeatureStatistics, fid_from_statistics

__all__ = [
    "RESIZE_MODES",
    "FIDInceptionV3",
    "FeatureStatistics",
    "ReferenceStatistics",
    "fid_from_statistics",
    "find_weights",
    "frechet_distance",
    "images_to_uint8",
    "sqrtm_psd",
]
