"""FID evaluation engine: the FID InceptionV3, streaming float64 statistics, Frechet distance, KID and IS."""

from .distance import ReferenceStatistics, frechet_distance, sqrtm_psd

__all__ = ["ReferenceStatistics", "frechet_distance", "sqrtm_psd"]
