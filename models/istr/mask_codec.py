"""ISTR's fixed mask codecs: a box-relative M x M mask <-> a K-dimensional embedding the detector regresses.

PCA (ISTR V1, the default). Every non-crowd ground-truth mask is cropped to its box and resampled to M x M
(`crop_box_masks`), flattened to D = M * M values, softened and moved to logit space (`soft_logits`: a pixel 1
becomes 1 - r, a pixel 0 becomes r, r ~ U(0, 0.05) floored at 0.01, then the inverse sigmoid), and a
class-agnostic whitened PCA is fitted to those vectors:

    encode(m) = ((logit(soft(m)) - mean) @ C^T) / sqrt(explained_variance)          [N, K]
    decode(z) = sigmoid((z * sqrt(explained_variance)) @ C + mean)                  [N, M, M] probabilities

The fit is exact and streams: `CovarianceAccumulator` merges per-batch means and scatter matrices in float64
(Chan, Golub & LeVeque's pairwise update), so memory is one D x D matrix (784 x 784 for 28 x 28 masks) whatever
the dataset size, and one pass suffices; the covariance is then eigen-decomposed (`numpy.linalg.eigh`). The
official code used scikit-learn's IncrementalPCA, which approximates the same decomposition batch by batch and is
not a dependency here.

DCT (ISTR V2's data-free alternative): the first K coefficients of the orthonormal 2-D DCT-II of the binary mask
in zig-zag order; decode inverts them and clips to 0..1. It needs no fitting.

A PCA codec is saved as one torch file (`save` / `load_pca_codec`, written atomically) holding the components,
mean, explained variance (and its ratio), K, M, the number of masks and the dataset it was fitted on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from scipy.fft import dct
from torch import Tensor, nn

from datamodules.files import atomic_path
from models.common.masks import crop_and_resize_masks

CODEC_KINDS = ("pca", "dct")
CODEC_FORMAT = "maskbench-istr-pca-codec/1"
# The official soft-logit transform: a 0/1 pixel becomes r / 1 - r with r ~ U(0, SOFT_MAX), floored at SOFT_MIN.
SOFT_MAX = 0.05
SOFT_MIN = 0.01


class CodecError(ValueError):
    """A codec file that cannot be used: missing, unreadable, or of the wrong K / mask size. One line."""


# ----------------------------------------------------------------------------------------------- masks


def crop_box_masks(masks: Tensor, boxes: Tensor, mask_size: int, mask_indices: Tensor | None = None) -> Tensor:
    """Binary box-relative masks: each mask cropped to its box, resampled to mask_size x mask_size, >= 0.5.

    masks uint8/bool/float [N, H, W] (0/1), boxes float [K, 4] xyxy pixels of the masks -> float [K, M, M] of 0/1.
    The pixel-aligned RoIAlign convention (detectron2's BitMasks.crop_and_resize, which the official code used);
    the codec is fitted on, and the detector trained against, exactly these crops.
    """
    crops = crop_and_resize_masks(masks, boxes.float(), mask_size, mask_indices=mask_indices, aligned=True)
    return (crops >= 0.5).float()


def soft_logits(masks: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The official pre-processing: [N, M, M] or [N, D] 0/1 masks -> float [N, D] logits of softened values.

    A pixel >= 0.5 becomes 1 - r, any other r, with r ~ U(0, 0.05) per pixel floored at 0.01, so the logits stay
    within +-4.6 (logit(0.99)). `generator` makes the noise reproducible (codec fitting); None draws from torch's
    global generator (training targets, as the official encoder).
    """
    values = masks.flatten(1).float()
    if generator is None:
        noise = torch.rand(values.shape, dtype=values.dtype, device=values.device)
    else:  # a seeded CPU generator: the same noise on any device
        noise = torch.rand(values.shape, generator=generator, dtype=values.dtype).to(values.device)
    noise = (noise * SOFT_MAX).clamp(min=SOFT_MIN)
    return torch.logit(torch.where(values >= 0.5, 1 - noise, noise))


# ------------------------------------------------------------------------------------------- PCA fitting


class CovarianceAccumulator:
    """Running mean and scatter matrix of D-dimensional rows in float64; exact, one pass, O(D^2) memory.

    `update(x [n, D])` merges a batch with Chan et al.'s pairwise formula (numerically stable, unlike summing raw
    outer products); `covariance()` is the unbiased (n - 1) estimate, scikit-learn's PCA convention.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.scatter = np.zeros((dim, dim), dtype=np.float64)

    def update(self, rows: Tensor | np.ndarray) -> None:
        batch = rows.detach().cpu().double().numpy() if isinstance(rows, Tensor) else np.asarray(rows, np.float64)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"CovarianceAccumulator: rows must be [n, {self.dim}], got {batch.shape}")
        n = batch.shape[0]
        if n == 0:
            return
        batch_mean = batch.mean(axis=0)
        centred = batch - batch_mean
        total = self.count + n
        delta = batch_mean - self.mean
        self.scatter += centred.T @ centred + np.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def covariance(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"CovarianceAccumulator: need at least 2 rows for a covariance, got {self.count}")
        return self.scatter / (self.count - 1)


@dataclass
class PCAFit:
    """A full eigen-decomposition of the soft-logit covariance, largest variance first.

    components float64 [D, D] (rows), explained_variance [D], mean [D], count (masks seen). A codec with K
    components keeps the first K rows; the whole decomposition lets a report compare several K from one pass.
    """

    components: np.ndarray
    explained_variance: np.ndarray
    mean: np.ndarray
    count: int

    @property
    def total_variance(self) -> float:
        return float(self.explained_variance.sum())

    @property
    def rank(self) -> int:
        """Components with a variance distinguishable from round-off (numpy.linalg.matrix_rank's tolerance);
        whitening divides by the others' near-zero variance, so a codec must stay within the rank."""
        tolerance = self.explained_variance[0] * len(self.explained_variance) * np.finfo(np.float64).eps
        return int((self.explained_variance > tolerance).sum())


def principal_components(accumulator: CovarianceAccumulator) -> PCAFit:
    """Eigen-decompose the accumulated covariance: components sorted by decreasing variance.

    Each component's sign is fixed so that its largest-magnitude entry is positive (scikit-learn's svd_flip
    convention), which makes the result deterministic. Round-off can leave tiny negative eigenvalues; they are
    clipped at 0.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(accumulator.covariance())
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    components = eigenvectors[:, order].T.copy()
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), largest])
    components *= np.where(signs == 0, 1.0, signs)[:, None]
    return PCAFit(components, eigenvalues, accumulator.mean.copy(), accumulator.count)


def fit_pca(mask_batches: Iterable[Tensor], mask_size: int, seed: int = 0) -> PCAFit:
    """Stream batches of 0/1 box masks ([n, M, M]) through `soft_logits` into a covariance; eigen-decompose it.

    The soft-logit noise comes from a generator seeded with `seed`, so the same batches give the same fit.
    """
    generator = torch.Generator().manual_seed(seed)
    accumulator = CovarianceAccumulator(mask_size * mask_size)
    for batch in mask_batches:
        if batch.shape[-2:] != (mask_size, mask_size):
            raise ValueError(f"fit_pca: masks must be [n, {mask_size}, {mask_size}], got {tuple(batch.shape)}")
        accumulator.update(soft_logits(batch.cpu(), generator))
    if accumulator.count < 2:
        raise ValueError(f"fit_pca: a PCA needs at least 2 masks, got {accumulator.count}")
    return principal_components(accumulator)


# ------------------------------------------------------------------------------------------------ codecs


class PCAMaskCodec(nn.Module):
    """The whitened PCA codec (fixed, never trained). Buffers, so checkpoints carry it.

    Args:
        num_components: K, the embedding size.
        mask_size: M; masks are M x M, D = M * M.

    Until fitted or loaded, `ready` is False and encode / decode raise. `encode(masks [N, M, M] or [N, D] 0/1)
    -> [N, K]`; `decode(z [N, K]) -> [N, M, M]` probabilities; `decode_logits` the same before the sigmoid.
    """

    kind = "pca"

    def __init__(self, num_components: int, mask_size: int = 28):
        super().__init__()
        dim = mask_size * mask_size
        if not 1 <= num_components <= dim:
            raise ValueError(f"PCAMaskCodec: num_components must be in [1, {dim}] for {mask_size}x{mask_size} masks, "
                             f"got {num_components}")
        self.num_components = num_components
        self.mask_size = mask_size
        self.register_buffer("components", torch.zeros(num_components, dim))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("explained_variance", torch.ones(num_components))
        self.register_buffer("explained_variance_ratio", torch.zeros(num_components))
        self.register_buffer("ready", torch.tensor(False))
        self.source: dict[str, Any] = {}

    # --------------------------------------------------------------------------------------------- setting

    def set_basis(self, components: Tensor, mean: Tensor, explained_variance: Tensor,
                  explained_variance_ratio: Tensor | None = None, source: dict[str, Any] | None = None) -> None:
        """Install a fitted basis (components [K, D], mean [D], explained_variance [K] > 0)."""
        k, dim = self.num_components, self.mask_size**2
        for name, value, shape in (("components", components, (k, dim)), ("mean", mean, (dim,)),
                                   ("explained_variance", explained_variance, (k,))):
            if tuple(value.shape) != shape:
                raise CodecError(f"PCA codec: {name} must be {list(shape)} for K={k}, {self.mask_size}x"
                                 f"{self.mask_size} masks, got {list(value.shape)}")
        if not bool(torch.all(torch.as_tensor(explained_variance) > 0)):
            raise CodecError("PCA codec: every explained variance must be > 0 (whitening divides by its square root); "
                             "fit fewer components than the masks have degrees of freedom")
        with torch.no_grad():
            self.components.copy_(torch.as_tensor(components, dtype=torch.float32))
            self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.explained_variance.copy_(torch.as_tensor(explained_variance, dtype=torch.float32))
            ratio = explained_variance_ratio if explained_variance_ratio is not None else torch.zeros(k)
            self.explained_variance_ratio.copy_(torch.as_tensor(ratio, dtype=torch.float32))
            self.ready.fill_(True)
        self.source = dict(source or {})

    @classmethod
    def from_fit(cls, fit: PCAFit, num_components: int, mask_size: int,
                 source: dict[str, Any] | None = None) -> "PCAMaskCodec":
        codec = cls(num_components, mask_size)
        if fit.components.shape[1] != mask_size**2:
            raise ValueError(f"PCAMaskCodec.from_fit: the fit is of {fit.components.shape[1]}-d masks, not "
                             f"{mask_size}x{mask_size}")
        if num_components > fit.rank:
            raise CodecError(
                f"PCA codec: K={num_components} components, but the {fit.count} masks fitted span only {fit.rank} "
                "dimensions (every explained variance must be > 0 for whitening): fit fewer components or more masks"
            )
        total = fit.total_variance
        variance = fit.explained_variance[:num_components]
        codec.set_basis(
            torch.from_numpy(fit.components[:num_components]).float(),
            torch.from_numpy(fit.mean).float(),
            torch.from_numpy(variance).float(),
            torch.from_numpy(variance / total if total > 0 else np.zeros_like(variance)).float(),
            {**(source or {}), "num_masks": fit.count},
        )
        return codec

    def truncated(self, num_components: int) -> "PCAMaskCodec":
        """The codec of the first `num_components` components (a PCA's K-prefix is the K-component PCA)."""
        self._check_ready()
        codec = PCAMaskCodec(num_components, self.mask_size)
        if num_components > self.num_components:
            raise ValueError(f"truncated: {num_components} > the codec's {self.num_components} components")
        codec.set_basis(self.components[:num_components], self.mean, self.explained_variance[:num_components],
                        self.explained_variance_ratio[:num_components], self.source)
        return codec

    # ---------------------------------------------------------------------------------------------- coding

    def encode(self, masks: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """0/1 masks [N, M, M] or [N, D] -> whitened embeddings [N, K] (soft-logit noise from `generator`)."""
        self._check_masks(masks)
        return self.encode_logits(soft_logits(masks, generator))

    def encode_logits(self, logits: Tensor) -> Tensor:
        """Soft-logit vectors [N, D] (see `soft_logits`) -> whitened embeddings [N, K]."""
        self._check_ready()
        centred = logits.to(self.mean.dtype) - self.mean
        return (centred @ self.components.T) / self.explained_variance.sqrt()

    def decode_logits(self, embeddings: Tensor) -> Tensor:
        """[N, K] -> [N, M, M] mask logits."""
        self._check_ready()
        if embeddings.shape[-1] != self.num_components:
            raise ValueError(f"PCA codec: embeddings must be [N, {self.num_components}], got {tuple(embeddings.shape)}")
        flat = (embeddings * self.explained_variance.sqrt()) @ self.components + self.mean
        return flat.view(-1, self.mask_size, self.mask_size)

    def decode(self, embeddings: Tensor) -> Tensor:
        """[N, K] -> [N, M, M] mask probabilities."""
        return self.decode_logits(embeddings).sigmoid()

    def _check_ready(self) -> None:
        if not bool(self.ready):
            raise CodecError(
                "the PCA mask codec is not fitted: give the model a codec file (codec_path, made by `maskbench "
                "fit-codec`), train it with a datamodule (fit fits the codec on the training split), or load a "
                "checkpoint that holds one"
            )

    def _check_masks(self, masks: Tensor) -> None:
        dim = self.mask_size**2
        if masks.flatten(1).shape[1] != dim:
            raise ValueError(f"PCA codec: masks must be [N, {self.mask_size}, {self.mask_size}] or [N, {dim}], "
                             f"got {tuple(masks.shape)}")

    # ------------------------------------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> str:
        """Write the codec to `path` atomically (temporary file in the same folder, then rename)."""
        self._check_ready()
        record = {
            "format": CODEC_FORMAT,
            "num_components": self.num_components,
            "mask_size": self.mask_size,
            "components": self.components.detach().cpu().clone(),
            "mean": self.mean.detach().cpu().clone(),
            "explained_variance": self.explained_variance.detach().cpu().clone(),
            "explained_variance_ratio": self.explained_variance_ratio.detach().cpu().clone(),
            "source": dict(self.source),
        }
        path = os.fspath(path)
        with atomic_path(path) as tmp:
            torch.save(record, tmp)
        return path

    def load_file(self, path: str | os.PathLike) -> None:
        """Install the codec saved at `path`; CodecError when it is not a codec or its K / M differ from this one."""
        record = read_codec_file(path)
        if record["num_components"] != self.num_components or record["mask_size"] != self.mask_size:
            raise CodecError(
                f"{os.fspath(path)}: codec has K={record['num_components']} components of "
                f"{record['mask_size']}x{record['mask_size']} masks, the model expects K={self.num_components}, "
                f"{self.mask_size}x{self.mask_size} (refit it: maskbench fit-codec --components {self.num_components} "
                f"--mask-size {self.mask_size}, or change the model's codec_components / codec_mask_size)"
            )
        self.set_basis(record["components"], record["mean"], record["explained_variance"],
                       record["explained_variance_ratio"], {**record["source"], "file": os.fspath(path)})


def read_codec_file(path: str | os.PathLike) -> dict[str, Any]:
    """The dict a PCA codec file holds, checked; CodecError (one line, naming the file) otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CodecError(f"{path}: codec file not found (make one with `maskbench fit-codec`)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file it cannot read safely
        raise CodecError(f"{path}: cannot be read as a torch file ({' '.join(str(error).split())})") from error
    if not isinstance(record, dict) or record.get("format") != CODEC_FORMAT:
        raise CodecError(f"{path}: not a maskbench ISTR codec file (expected format {CODEC_FORMAT!r})")
    for key in ("num_components", "mask_size", "components", "mean", "explained_variance", "explained_variance_ratio"):
        if key not in record:
            raise CodecError(f"{path}: codec file lacks {key!r}")
    record.setdefault("source", {})
    return record


def load_pca_codec(path: str | os.PathLike) -> PCAMaskCodec:
    """A PCA codec read from `path`, with the K and M the file holds."""
    record = read_codec_file(path)
    codec = PCAMaskCodec(int(record["num_components"]), int(record["mask_size"]))
    codec.load_file(path)
    return codec


class DCTMaskCodec(nn.Module):
    """ISTR V2's DCT codec: the first K orthonormal 2-D DCT-II coefficients of the 0/1 mask in zig-zag order.

    Data-free (nothing to fit) and unwhitened; decode is the inverse transform of the kept coefficients, clipped to
    0..1. Same interface as PCAMaskCodec (`encode`, `decode`, `decode_logits` = the unclipped reconstruction).
    """

    kind = "dct"

    def __init__(self, num_components: int, mask_size: int = 28):
        super().__init__()
        dim = mask_size * mask_size
        if not 1 <= num_components <= dim:
            raise ValueError(f"DCTMaskCodec: num_components must be in [1, {dim}], got {num_components}")
        self.num_components = num_components
        self.mask_size = mask_size
        basis_1d = dct(np.eye(mask_size), norm="ortho", axis=0)  # [frequency, position]
        rows, cols = zip(*zigzag_order(mask_size)[:num_components])
        basis = np.einsum("ky,kx->kyx", basis_1d[list(rows)], basis_1d[list(cols)]).reshape(num_components, dim)
        # Derived from K and M alone: not saved in checkpoints.
        self.register_buffer("components", torch.from_numpy(basis).float(), persistent=False)

    def encode(self, masks: Tensor, generator: torch.Generator | None = None) -> Tensor:
        values = (masks.flatten(1) >= 0.5).to(self.components.dtype)
        if values.shape[1] != self.mask_size**2:
            raise ValueError(f"DCT codec: masks must be [N, {self.mask_size}, {self.mask_size}], got "
                             f"{tuple(masks.shape)}")
        return values @ self.components.T

    def decode_logits(self, embeddings: Tensor) -> Tensor:
        return (embeddings @ self.components).view(-1, self.mask_size, self.mask_size)

    def decode(self, embeddings: Tensor) -> Tensor:
        return self.decode_logits(embeddings).clamp(0.0, 1.0)


def zigzag_order(size: int) -> list[tuple[int, int]]:
    """(row, col) frequency pairs of a size x size DCT in JPEG's zig-zag order (lowest frequencies first)."""
    order = []
    for diagonal in range(2 * size - 1):
        cells = [(i, diagonal - i) for i in range(size) if 0 <= diagonal - i < size]
        order.extend(cells if diagonal % 2 else cells[::-1])
    return order


def build_codec(kind: str, num_components: int, mask_size: int) -> PCAMaskCodec | DCTMaskCodec:
    if kind == "pca":
        return PCAMaskCodec(num_components, mask_size)
    if kind == "dct":
        return DCTMaskCodec(num_components, mask_size)
    raise ValueError(f"mask codec must be one of {CODEC_KINDS}, got {kind!r}")


def mask_iou(predicted: Tensor, target: Tensor) -> Tensor:
    """IoU of binary masks pairwise by row: [N, ...] bool, [N, ...] bool -> [N] (1 where both are empty)."""
    predicted, target = predicted.flatten(1).bool(), target.flatten(1).bool()
    intersection = (predicted & target).sum(1).double()
    union = (predicted | target).sum(1).double()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))



@torch.no_grad()
def reconstruction_iou(codec: PCAMaskCodec, mask_batches: Iterable[Tensor], num_components: list[int],
                       seed: int = 0) -> tuple[dict[int, float], int]:
    """Mean IoU of encode -> decode -> threshold (> 0.5) against the 0/1 masks, for each K in `num_components`.

    `codec` must hold at least max(num_components) components; each K uses its K-prefix (the K-component PCA).
    Every mask gets one draw of soft-logit noise (seeded), shared by all K. Returns ({K: mean IoU}, masks seen).
    """
    generator = torch.Generator().manual_seed(seed)
    codecs = {k: codec.truncated(k) for k in num_components}
    totals = {k: 0.0 for k in num_components}
    count = 0
    for batch in mask_batches:
        logits = soft_logits(batch, generator)
        for k, truncated in codecs.items():
            decoded = truncated.decode(truncated.encode_logits(logits))
            totals[k] += float(mask_iou(decoded > 0.5, batch >= 0.5).sum())
        count += len(batch)
    if count == 0:
        raise ValueError("reconstruction_iou: no masks")
    return {k: totals[k] / count for k in num_components}, count
