"""The FID InceptionV3: the TensorFlow ``inception-2015-12-05`` graph ported to PyTorch.

FID (Heusel et al., arXiv 1706.08500) is defined on the pool3 features of the TF Inception graph
(Szegedy et al., arXiv 1512.00567). Its PyTorch port, whose weights are the file
``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid) or ``weights-inception-2015-12-05-6726825d.pth``
(torch-fidelity, same tensors), differs from torchvision's ``inception_v3`` in three places, as
pytorch-fid documents them:

- the average-pool branches of the A, C and first E blocks exclude the zero padding from the
  average (TF ``avg_pool`` with SAME padding), i.e. ``count_include_pad=False``;
- the pool branch of the last E block (``Mixed_7c``) is a 3x3 *max* pool, not an average pool;
- the classifier has 1008 outputs (the TF graph's 1001 classes padded to 1008).

Module and parameter names follow torchvision's ``Inception3`` so both weight files load as they
are. Outputs: pool3 features (B, 2048), or the 64/192/768-channel block outputs globally averaged
(pytorch-fid's ``--dims``), and the logits (B, 1008) for the Inception Score.

Input preprocessing (``resize``), recorded with every statistics file:

- ``"pytorch-fid"``: x / 255, ``F.interpolate(bilinear, 299, align_corners=False)``, then 2x - 1
  (mseitzer/pytorch-fid).
- ``"clean-fid"``: PIL bicubic resize of each channel as a float32 ``"F"`` image to 299, clipped to
  [0, 255] and not quantised, then (x - 128) / 128 (Parmar et al., arXiv 2104.11222). Needs Pillow;
  runs on the CPU image by image.
- ``"torch-fidelity"``: TensorFlow 1.x bilinear resize (source = destination * in / out, no half-pixel
  offset), then (x - 128) / 128, as the original TF graph does (toshas/torch-fidelity); torchmetrics'
  ``antialias=False``.
- ``"torchmetrics"``: ``F.interpolate(bilinear, 299, align_corners=False, antialias=True)`` of the
  uint8 values as floats, then (x - 128) / 128: torchmetrics' default (``antialias=True``).

Accepted images: uint8 (B, 3, H, W) in [0, 255]; float (B, 3, H, W) in [0, 1] (or [-1, 1] with
``input_range=(-1, 1)``), which is first quantised to uint8 by rounding, as saving to PNG would;
grayscale (B, 1, H, W) is repeated to three channels.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._io import file_digest

__all__ = [
    "FIDInceptionV3",
    "RESIZE_MODES",
    "WEIGHTS_FILENAME",
    "WEIGHTS_SHA256",
    "WEIGHTS_URL",
    "download_weights",
    "find_weights",
    "images_to_uint8",
    "network_name",
    "no_tf32",
    "resize_and_normalize",
]

RESIZE_MODES = ("pytorch-fid", "clean-fid", "torch-fidelity", "torchmetrics")
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FIDELITY_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
# The full SHA-256 of pt_inception-2015-12-05-6726825d.pth (95,628,359 bytes). Its name carries the first 8 hex
# digits by torch hub's convention (``torch.hub.HASH_REGEX``, checked only with ``check_hash=True``, which
# pytorch-fid, clean-fid and torch-fidelity do not pass), so the name alone proves nothing. This digest is not
# computed here (no network): it is the value that public repositories pinning the file record independently
# (found with a code search, e.g. HyperGAN/HyperGAN's FID docs, for torch-fidelity's identical copy
# weights-inception-2015-12-05-6726825d.pth), and it does start with the name's 6726825d.
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INPUT_SIZE = 299
BLOCK_DIMS = (64, 192, 768, 2048)


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in TF) and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that ignores the zero padding (TF SAME padding semantics)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b-d): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b-e)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks (Mixed_7b with average pool, Mixed_7c with max pool)."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = _avg_pool_tf(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, bd, bp], 1)


def network_name(dims: int = 2048) -> str:
    """Feature network name recorded with statistics: "inception-pool3" (2048) or "inception-<dims>"."""
    return "inception-pool3" if dims == 2048 else f"inception-{dims}"


def download_weights(url: str | None = None, sha256: str | None = None) -> Path:
    """Download the Inception weights (default :data:`WEIGHTS_URL`) into ``torch.hub.get_dir()/checkpoints/``.

    ``torch.hub.download_url_to_file`` writes a temporary file and moves it into place only when its
    SHA-256 equals ``sha256`` (default :data:`WEIGHTS_SHA256`, the whole digest, not the name's 8-digit
    prefix), so a failed, truncated or altered download leaves nothing behind.

    Raises:
        RuntimeError: the downloaded file's hash does not match.
    """
    dest = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url or WEIGHTS_URL, str(dest), hash_prefix=sha256 or WEIGHTS_SHA256, progress=True)
    return dest


def find_weights(path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """Locate the FID Inception weights file; downloads only when ``download`` (see :func:`download_weights`).

    Looks at ``path`` if given, else ``torch.hub.get_dir()/checkpoints/`` for pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth`` or torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``.

    Raises:
        FileNotFoundError: naming the file, where to download it from and where to put it.
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        raise FileNotFoundError(f"FID Inception weights not found at {p}. Download {WEIGHTS_URL} and pass its path.")
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    for name in (WEIGHTS_FILENAME, FIDELITY_WEIGHTS_FILENAME):
        if (ckpt / name).is_file():
            return ckpt / name
    if download:
        return download_weights()
    raise FileNotFoundError(
        f"FID Inception weights not found. Pass download=True (--download on the command line) to fetch them, "
        f"or download {WEIGHTS_URL} (about 92 MB) and put it at "
        f"{ckpt / WEIGHTS_FILENAME} (the torch hub cache, where pytorch-fid keeps it), or pass its path "
        f"explicitly (weights=... in Python, --weights on the command line). torch-fidelity's copy "
        f"{FIDELITY_WEIGHTS_FILENAME} in the same folder works too."
    )


@contextlib.contextmanager
def no_tf32():
    """Disable TF32 convolutions and matmuls (CUDA's default for convolutions: ~5e-4 relative rounding) while
    extracting features or estimating DPM-Solver-v3 statistics (whose s and b it moves by up to 100%); restore on
    exit.

    Uses torch's per-backend ``fp32_precision`` flags (torch >= 2.9): reading the legacy
    ``allow_tf32`` flags raises once any library (transformers does) has used the new ones.
    """
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        backends = (torch.backends.cuda.matmul, torch.backends.cudnn.conv)
        saved = [b.fp32_precision for b in backends]
        for b in backends:
            b.fp32_precision = "ieee"
        try:
            yield
        finally:
            for b, value in zip(backends, saved):
                b.fp32_precision = value
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def images_to_uint8(images: torch.Tensor, input_range: tuple[float, float] = (0.0, 1.0), check: bool = True):
    """Validate images and return uint8 (B, 3, H, W) in [0, 255].

    Args:
        images: uint8 (B, C, H, W) in [0, 255], or float (any float dtype) in ``input_range``;
            C is 3, or 1 (grayscale, repeated to 3 channels).
        input_range: (0, 1) or (-1, 1), the range of float images.
        check: check the float range (one min/max reduction; values may exceed it by 1e-3).

    Floats are quantised by rounding to the nearest of 256 levels (not truncation), as saving to PNG does.
    """
    accepted = "uint8 in [0, 255], or float in [0, 1] (or [-1, 1] with input_range=(-1, 1)), shape (B, 3 or 1, H, W)"
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor ({accepted}), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must have shape (B, 3, H, W) or (B, 1, H, W); got {tuple(images.shape)}. Accepted: {accepted}"
        )
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"images have dtype {images.dtype}; accepted: {accepted}")
    lo, hi = (float(v) for v in input_range)
    if (lo, hi) not in ((0.0, 1.0), (-1.0, 1.0)):
        raise ValueError(f"input_range must be (0, 1) or (-1, 1), got {input_range}")
    if check and images.numel():
        mn, mx = torch.aminmax(images.detach())
        tol = 1e-3 * (hi - lo)
        if not (float(mn) >= lo - tol and float(mx) <= hi + tol):
            raise ValueError(
                f"float images must lie in [{lo:g}, {hi:g}] (input_range={input_range}); got values in "
                f"[{float(mn):.4g}, {float(mx):.4g}]. Accepted: {accepted}"
            )
    x = (images.detach().float() - lo) * (255.0 / (hi - lo))
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear`` (align_corners=False): source = destination * in / out."""

    def axis(n_in: int):
        pos = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, pos - lo.float()

    ylo, yhi, dy = axis(x.shape[2])
    xlo, xhi, dx = axis(x.shape[3])
    top, bot = x.index_select(2, ylo), x.index_select(2, yhi)
    dx = dx.view(1, 1, 1, size)
    row0 = top.index_select(3, xlo) + (top.index_select(3, xhi) - top.index_select(3, xlo)) * dx
    row1 = bot.index_select(3, xlo) + (bot.index_select(3, xhi) - bot.index_select(3, xlo)) * dx
    return row0 + (row1 - row0) * dy.view(1, 1, size, 1)


def _pil_bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    """clean-fid's resize: PIL bicubic on each channel as a float32 "F" image, clipped to [0, 255]."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a torchvision dependency
        raise ImportError("resize='clean-fid' needs Pillow (pip install pillow)") from e
    arr = x.detach().cpu().numpy().astype(np.float32)
    out = np.empty((arr.shape[0], arr.shape[1], size, size), dtype=np.float32)
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            img = Image.fromarray(arr[b, c], mode="F").resize((size, size), resample=Image.BICUBIC)
            out[b, c] = np.asarray(img)
    return torch.from_numpy(out.clip(0, 255)).to(x.device)


def resize_and_normalize(images_u8: torch.Tensor, resize: str, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 (B, 3, size, size) in about [-1, 1], as the tool named by ``resize`` does."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if resize == "pytorch-fid":
        x = F.interpolate(images_u8.float() / 255.0, size=(size, size), mode="bilinear", align_corners=False)
        return 2 * x - 1
    if resize == "torchmetrics":
        x = F.interpolate(images_u8.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - 128) / 128
    x = _tf1_bilinear(images_u8.float(), size) if resize == "torch-fidelity" else _pil_bicubic(images_u8, size)
    return (x - 128) / 128


class FIDInceptionV3(nn.Module):
    """The FID InceptionV3 feature network with its input preprocessing.

    Args:
        weights: path to the weights file, ``None`` to search the torch hub cache (see
            :func:`find_weights`), or ``"random"`` for an initialised but untrained network (tests, timing).
        download: with ``weights=None``, download missing weights into the torch hub cache (hash-checked).
        dims: feature dimension returned by ``forward``: 2048 (pool3, FID), or 768, 192, 64 (earlier
            blocks, globally averaged, like pytorch-fid's ``--dims``).
        resize: one of :data:`RESIZE_MODES`.
        input_range: range of float input images, (0, 1) or (-1, 1).

    ``forward(images)`` returns (B, dims); :meth:`features_and_logits` returns pool3 (B, 2048) and logits
    (B, 1008), both in the network's dtype (float32 unless converted, e.g. ``.double()``). Feature
    extraction always runs with TF32 disabled (:func:`no_tf32`). The network never leaves eval mode
    (``train()`` is a no-op, as torchmetrics' ``NoTrainInceptionV3``): BatchNorm in training mode
    would make features depend on the batch.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        dims: int = 2048,
        resize: str = "pytorch-fid",
        input_range: tuple[float, float] = (0.0, 1.0),
        download: bool = False,
    ):
        super().__init__()
        if dims not in BLOCK_DIMS:
            raise ValueError(f"dims must be one of {BLOCK_DIMS}, got {dims}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.dims, self.resize, self.input_range = dims, resize, tuple(float(v) for v in input_range)
        with torch.device("meta"):  # no default initialisation: the weights are loaded or drawn below
            self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
            self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
            self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
            self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
            self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
            self.Mixed_5b = InceptionA(192, pool_features=32)
            self.Mixed_5c = InceptionA(256, pool_features=64)
            self.Mixed_5d = InceptionA(288, pool_features=64)
            self.Mixed_6a = InceptionB(288)
            self.Mixed_6b = InceptionC(768, channels_7x7=128)
            self.Mixed_6c = InceptionC(768, channels_7x7=160)
            self.Mixed_6d = InceptionC(768, channels_7x7=160)
            self.Mixed_6e = InceptionC(768, channels_7x7=192)
            self.Mixed_7a = InceptionD(768)
            self.Mixed_7b = InceptionE(1280, pool="avg")
            self.Mixed_7c = InceptionE(2048, pool="max")
            self.fc = nn.Linear(2048, 1008)
        if isinstance(weights, str) and weights == "random":
            self.to_empty(device="cpu")
            self.init_random_()
        else:
            self.load_weights(find_weights(weights, download=download))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_weights(cls, weights: str | os.PathLike | None = None, **kwargs) -> FIDInceptionV3:
        """``FIDInceptionV3(weights, **kwargs)``: weights from a path, or the torch hub cache when None."""
        return cls(weights, **kwargs)

    @property
    def name(self) -> str:
        """Feature network name recorded with statistics files (:func:`network_name`)."""
        return network_name(self.dims)

    @property
    def identity(self) -> dict:
        """Metadata that statistics made with this network carry (see ``FeatureStatistics.check_compatible``)."""
        return {"feature_network": self.name, "resize_mode": self.resize, "dim": self.dims}

    @property
    def num_features(self) -> int:
        return self.dims

    @property
    def weights_digest(self) -> str:
        """SHA-256 of the weights file, or ``"random-seed<seed>"`` after :meth:`init_random_` (keys cached results)."""
        return f"random-seed{self._seed}" if self.weights_path is None else file_digest(self.weights_path)

    def train(self, mode: bool = True) -> FIDInceptionV3:
        """Stay in eval mode whatever ``mode`` is (an evaluation network; see the class docstring)."""
        return super().train(False)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a pytorch-fid or torch-fidelity state dict (BatchNorm ``num_batches_tracked`` optional)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits")}
        own = self.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own]
        bad = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or bad:
            raise ValueError(
                f"{path} is not an FID Inception state dict: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"wrong shapes {bad[:5]}"
            )
        full = {k: state[k] if k in state else torch.zeros((), dtype=torch.long) for k in own}
        self.load_state_dict(full, assign=True)
        self.weights_path = Path(path)

    @torch.no_grad()
    def init_random_(self, seed: int = 0) -> FIDInceptionV3:
        """Random weights that keep activations O(1) (He-normal convolutions, random BN affine and statistics)."""
        self.weights_path, self._seed = None, seed
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.num_batches_tracked.zero_()
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(n, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
                m.bias.copy_(0.1 * torch.randn(m.out_features, generator=g))
        return self

    def preprocess(self, images: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Images (see :func:`images_to_uint8`) -> (B, 3, 299, 299) network input on the model's device and dtype."""
        u8 = images_to_uint8(images, self.input_range, check=check)
        w = self.fc.weight
        return resize_and_normalize(u8, self.resize).to(device=w.device, dtype=w.dtype)

    def _trunk(self, x: torch.Tensor, stop_dims: int) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        if stop_dims == 64:
            return x
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        if stop_dims == 192:
            return x
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        if stop_dims == 768:
            return x
        return self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))

    def forward_normalized(self, x: torch.Tensor, dims: int | None = None) -> torch.Tensor:
        """Already preprocessed float input (B, 3, 299, 299) -> features (B, dims) in the network's dtype."""
        fmap = self._trunk(x, dims or self.dims)
        return F.adaptive_avg_pool2d(fmap, 1).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> features (B, dims) in the network's dtype."""
        with torch.no_grad(), no_tf32():
            return self.forward_normalized(self.preprocess(images))

    def features_and_logits(self, images: torch.Tensor, bias: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (pool3 features (B, 2048), logits (B, 1008)), both in the network's dtype.

        ``bias=False`` gives torch-fidelity's ``logits_unbiased`` (the classifier without its bias), which
        torch-fidelity and torchmetrics use for the Inception Score.
        """
        with torch.no_grad(), no_tf32():
            feats = self.forward_normalized(self.preprocess(images), dims=2048)
            logits = feats @ self.fc.weight.to(feats.dtype).T
            if bias:
                logits = logits + self.fc.bias.to(feats.dtype)
        return feats, logits
