"""Blind grouping of images by source camera, without a reference fingerprint.

Every image gives a noise residual at one common analysis size (a centre
crop; portrait images are rotated by 90 degrees in the analysis only, their
pixels stay in sensor orientation). Spectral peaks shared by the whole set
(the JPEG 8x8 grid and other non-unique artefacts, which would otherwise
correlate across cameras and grow with every image a cluster gathers) are
notched out, and each residual is normalised to zero mean and unit norm.

For all pairs at once, two matrix products give the correlation at zero shift
``G = X Xᵀ`` and the energy of the circular cross-correlation surface (by
Parseval, ``Σ_f P_i(f) P_j(f) / n²`` with ``P`` the power spectra), so that

    z_ij = G_ij / sqrt(energy_ij),    PCE_ij = sign(z_ij) z_ij²

is the peak-to-correlation energy of the pair at zero shift [1]_, close to
standard normal when the two images come from different cameras. The scale
of that null is checked on the data (from the negative scores, which the
same-camera pairs never reach) and never taken below 1.

Clusters grow by agglomeration on the consensus of their members (the sum
of their normalised residuals, a maximum-likelihood fingerprint estimate up
to the weighting) [2]_ [3]_: the two clusters whose consensuses correlate
most are merged while that correlation exceeds a threshold set by the
false-alarm probability ``alpha`` over every test the procedure can make
(Bonferroni: the ``N(N-1)/2`` pairs plus at most ``(N-1)(N-2)/2`` tests of a
merged cluster against another, ``(N-1)²`` in all). A merge is refused when a
member of the merged cluster would not correlate significantly with the
consensus of the others. Images that cannot be placed stay alone.

References
----------
.. [1] M. Goljan, J. Fridrich, T. Filler, "Large scale test of sensor
   fingerprint camera identification", Proc. SPIE 7254, 2009.
   :doi:`10.1117/12.805701`
.. [2] G. J. Bloy, "Blind camera fingerprinting and image clustering", IEEE
   Trans. Pattern Analysis and Machine Intelligence 30(3), 532-534, 2008.
.. [3] X. Lin, C.-T. Li, "Large-scale image clustering based on camera
   fingerprints", IEEE Trans. Inf. Forensics Security 12(4), 793-808, 2017.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np

from .evidence import DEFAULT_MAX_PIXELS, EvidenceError, load_image, read_bytes, repeated_image, sniff
from .fingerprint import FingerprintAccumulator
from .identify import cropped_pixels, residual_of
from .provenance import tool_info, utc_now
from .residual import ResidualParams, rounding_variance

__all__ = [
    "DEFAULT_SIZE",
    "ClusterSettings",
    "analysis_size",
    "z_threshold",
    "common_peaks",
    "prepare",
    "pair_scores",
    "turned_products",
    "agglomerate",
    "ClusterResult",
    "cluster_images",
    "cluster_fingerprint",
]

DEFAULT_SIZE = 1024
"""Side of the square analysis crop when none is given (smaller if the smallest image is)."""

PEAK_RATIO = 3.0
"""A frequency whose mean power over the set exceeds this many times its 5x5 neighbourhood's median is notched."""


@dataclass(frozen=True)
class ClusterSettings:
    """How images are grouped (recorded in every result).

    Attributes
    ----------
    crop : (rows, cols) or None
        Analysis size in landscape orientation; None: ``DEFAULT_SIZE`` square,
        or the smallest image's shorter side (rounded down to even) if smaller.
    alpha : float
        False-alarm probability of the whole procedure (all tests together).
    params : ResidualParams
    block : int
        Rows per block of the matrix products (memory: two blocks of residuals).
    in_memory_bytes : int
        Residual and spectrum matrices larger than this are memory-mapped
        files in a temporary folder (the system's, removed afterwards).
    """

    crop: tuple[int, int] | None = None
    alpha: float = 1e-3
    params: ResidualParams = ResidualParams()
    block: int = 256
    in_memory_bytes: int = 4 << 30

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")

    def as_dict(self) -> dict:
        return {
            "crop": list(self.crop) if self.crop else None,
            "alpha": self.alpha,
            "residual_params": self.params.as_dict(),
            "peak_ratio": PEAK_RATIO,
        }


def analysis_size(shapes: Iterable[tuple[int, int]], crop: tuple[int, int] | None = None) -> tuple[int, int]:
    """The common (rows, cols) analysis size, landscape (rows <= cols).

    With ``crop`` given it is returned with its sides ordered; otherwise a
    square of ``min(DEFAULT_SIZE, smallest shorter side)`` rounded down to even.
    """
    if crop is not None:
        return min(crop), max(crop)
    sides = [min(s) for s in shapes]
    if not sides:
        raise ValueError("no image to size the analysis from")
    side = min(DEFAULT_SIZE, min(sides)) & ~1
    return side, side


def z_threshold(alpha: float, n_tests: int) -> float:
    """One-sided normal threshold with family-wise false-alarm probability ``alpha`` over ``n_tests`` (Bonferroni)."""
    return NormalDist().inv_cdf(1.0 - alpha / max(n_tests, 1))


def _as_images(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return x.reshape(-1, *size)


def _spectrum(row: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.dft(np.ascontiguousarray(row, dtype=np.float32).reshape(size), flags=cv2.DFT_COMPLEX_OUTPUT)


def _power(spec: np.ndarray) -> np.ndarray:
    return spec[..., 0] * spec[..., 0] + spec[..., 1] * spec[..., 1]


def common_peaks(x, size: tuple[int, int], ratio: float = PEAK_RATIO) -> np.ndarray:
    """Mask of the frequencies where the set's mean power spectrum peaks.

    Parameters
    ----------
    x : ndarray, float32, shape (N, rows*cols)
        Residuals, one per row.
    size : (rows, cols)
    ratio : float
        A frequency is masked when the mean power exceeds ``ratio`` times the
        median of its 5x5 neighbourhood; the mask is made symmetric
        (``f`` and ``-f`` together) and always holds the mean (0, 0).

    Returns
    -------
    ndarray of bool, shape (rows, cols)
    """
    power = np.zeros(size, np.float64)
    for row in x:
        power += _power(_spectrum(row, size))
    log_power = np.log(np.maximum(power, 1e-30)).astype(np.float32)
    mask = log_power - cv2.medianBlur(log_power, 5) > math.log(ratio)
    mask |= np.roll(mask[::-1, ::-1], 1, axis=(0, 1))  # f and -f together: the filtered residual stays real
    mask[0, 0] = True
    return mask


def prepare(
    x, size: tuple[int, int], *, notch: bool = True, ratio: float = PEAK_RATIO, out: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Notch the set's common spectral peaks, then zero mean and unit norm, in place; return the power spectra.

    Parameters
    ----------
    x : ndarray, float32, shape (N, rows*cols)
        Residuals, one per row (modified in place; a memory map works).
    size : (rows, cols)
    notch : bool
        Notch the common peaks (:func:`common_peaks`); otherwise only the mean is removed.
    ratio : float
    out : ndarray, optional
        Where to write the spectra (e.g. a memory map).

    Returns
    -------
    spectra : ndarray, float32, shape (N, rows*(cols//2+1))
        Power spectra of the normalised rows over the half spectrum, scaled
        by the square roots of the multiplicities, so that ``spectra @ spectraᵀ``
        is ``Σ_f P_i(f) P_j(f)`` over the full spectrum (``Σ_f P_i(f) = n``).
    notched : int
        Frequencies notched, the mean included.
    """
    if notch:
        mask = common_peaks(x, size, ratio)
    else:
        mask = np.zeros(size, bool)
        mask[0, 0] = True
    half = size[1] // 2 + 1
    weights = _spectral_weights(size)
    n = size[0] * size[1]
    spectra = np.empty((len(x), size[0] * half), np.float32) if out is None else out
    for i in range(len(x)):
        spec = _spectrum(x[i], size)
        spec[mask] = 0
        power = _power(spec)
        energy = float(power.sum(dtype=np.float64)) / n  # Parseval: the squared norm of the filtered row
        scale = 1.0 / math.sqrt(energy) if energy > 0 else 0.0
        x[i] = cv2.dft(spec, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE).ravel() * np.float32(scale)
        spectra[i] = (power[:, :half] * np.float32(scale * scale) * weights).ravel()
    return spectra, int(mask.sum())


def _spectral_weights(size: tuple[int, int]) -> np.ndarray:
    """Square roots of the half-spectrum multiplicities, so that dot products sum over the full spectrum."""
    w = np.full(size[1] // 2 + 1, 2.0)
    w[0] = 1.0
    if size[1] % 2 == 0:
        w[-1] = 1.0
    return np.sqrt(w).astype(np.float32)


def _gram(x, block: int) -> np.ndarray:
    """``x xᵀ`` in float32 by row blocks (``x`` may be a memory map)."""
    n = len(x)
    g = np.empty((n, n), np.float32)
    for i in range(0, n, block):
        xi = np.asarray(x[i : i + block], np.float32)
        for j in range(i, n, block):
            xj = xi if j == i else np.asarray(x[j : j + block], np.float32)
            b = xi @ xj.T
            g[i : i + block, j : j + block] = b
            g[j : j + block, i : i + block] = b.T
    return g


def pair_scores(x, spectra, *, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Correlation and cross-correlation energy of every pair of prepared residuals.

    Parameters
    ----------
    x : ndarray, float32, shape (N, rows*cols)
        Zero-mean, unit-norm residuals and
    spectra : ndarray, float32, shape (N, rows*(cols//2+1))
        their power spectra, both from :func:`prepare`.
    block : int
        Rows per block of the products.

    Returns
    -------
    g : ndarray, float32, shape (N, N)
        ``x_i · x_j`` (the correlation at zero shift).
    q : ndarray, float64, shape (N, N)
        ``Σ_f P_i(f) P_j(f)`` over the full spectrum; the mean square of the
        pair's circular cross-correlation is ``q / n²`` with ``n = rows*cols``.
    """
    return _gram(x, block), _gram(spectra, block).astype(np.float64)


def turned_products(x, portrait: np.ndarray, *, block: int = 256) -> np.ndarray:
    """``x_i · rot180(x_j)`` for every pair with a portrait image; 0 for landscape pairs.

    A residual row reversed is its image turned by 180 degrees, so a portrait
    image analysed at 90 degrees is compared at 270 degrees as well.

    Parameters
    ----------
    x : ndarray, float32, shape (N, rows*cols)
    portrait : ndarray of bool, shape (N,)
    block : int

    Returns
    -------
    ndarray, float32, shape (N, N), symmetric
    """
    count = len(x)
    r = np.zeros((count, count), np.float32)
    index = np.flatnonzero(portrait)
    for j in range(0, len(index), block):
        cols = index[j : j + block]
        turned = np.ascontiguousarray(np.asarray(x[cols], np.float32)[:, ::-1])
        for i in range(0, count, block):
            r[i : i + block, cols] = np.asarray(x[i : i + block], np.float32) @ turned.T
    r[index, :] = r[:, index].T
    return r


def null_scale(z: np.ndarray, minimum: int = 50) -> float:
    """Scale of the different-camera scores, from the negative off-diagonal ones; at least 1.

    Same-camera pairs score high, so the negative side is the null alone;
    with fewer than ``minimum`` negative scores the theory's 1 is kept.
    """
    off = z[~np.eye(len(z), dtype=bool)]
    neg = off[off < 0]
    if neg.size < minimum:
        return 1.0
    return max(1.0, float(np.sqrt(np.mean(np.square(neg, dtype=np.float64)))))


@dataclass
class _Linkage:
    """Cluster-level sums of the pair matrices, additive under merges.

    ``g[A, B]`` sums ``x_i · x_j`` over the members as they are oriented now,
    ``f[A, B]`` the same with cluster B turned by 180 degrees (allowed only
    where A or B holds portrait images alone: their 90 or 270 degrees is unknown).
    """

    g: np.ndarray
    f: np.ndarray
    q: np.ndarray
    sizes: np.ndarray
    flippable: np.ndarray
    n: int
    scale: float

    def z(self, a: int, b, flipped: bool = False) -> np.ndarray:
        """Consensus-to-consensus z of cluster ``a`` against cluster(s) ``b``."""
        ca, cb = self.g[a, a] - self.sizes[a], self.g[b, b] - self.sizes[b]
        q = self.q[a, b] + self.n * (cb * self.sizes[a] + ca * self.sizes[b] + ca * cb)
        dot = (self.f if flipped else self.g)[a, b]
        return dot * self.n / np.sqrt(np.maximum(q, 1e-300)) / self.scale

    def best(self, a: int, b) -> tuple[np.ndarray, np.ndarray]:
        """The better z of the two relative orientations allowed, and whether it is the turned one."""
        z0 = self.z(a, b)
        allowed = self.flippable[a] | self.flippable[b]
        z1 = np.where(allowed, self.z(a, b, True), -np.inf)
        return np.maximum(z0, z1), z1 > z0

    def turn(self, a: int) -> None:
        """Turn cluster ``a`` by 180 degrees: its same- and turned-orientation sums swap."""
        keep = self.g[a, a]
        ga, fa = self.g[a].copy(), self.f[a].copy()
        self.g[a], self.f[a] = fa, ga
        self.g[:, a], self.f[:, a] = fa, ga
        self.g[a, a] = keep

    def merge(self, a: int, b: int) -> None:
        for m in (self.g, self.f, self.q):
            m[a, :] += m[b, :]
            m[:, a] += m[:, b]
            m[b, :] = 0
            m[:, b] = 0
        self.sizes[a] += self.sizes[b]
        self.sizes[b] = 0
        self.flippable[a] &= self.flippable[b]


def _member_z(members, g, r, q, turned, n: int, scale: float) -> np.ndarray:
    """z of each member against the consensus of the others (leave-one-out), orientations as ``turned`` says."""
    ix = np.ix_(members, members)
    same = turned[members][:, None] == turned[members][None, :]
    sub_g = np.where(same, g[ix], r[ix]).astype(np.float64)
    sub_q = q[ix]
    k = len(members)
    dot = sub_g.sum(1) - np.diag(sub_g)
    rest_norm2 = sub_g.sum() - 2 * dot - np.diag(sub_g)
    c_rest = rest_norm2 - (k - 1)
    energy = sub_q.sum(1) - np.diag(sub_q) + n * c_rest
    return dot * n / np.sqrt(np.maximum(energy, 1e-300)) / scale


def _bridges(first, second, g, r, q, turned, n: int, scale: float) -> np.ndarray:
    """z of ``first``'s consensus against ``second``'s with each member of either left out (the order of
    ``first + second``); NaN where leaving it out would leave its own side with fewer than two members.

    The same consensus-to-consensus z as :meth:`_Linkage.z`, from the pair matrices with one row removed at a
    time (each sum updated, O(k²) for k members in all). A merge of two groups that only one image links (a
    composite of two cameras' frames, a blend) has a member whose removal leaves the groups unrelated.
    """
    joined = list(first) + list(second)
    ix = np.ix_(joined, joined)
    same = turned[joined][:, None] == turned[joined][None, :]
    G = np.where(same, g[ix], r[ix]).astype(np.float64)
    Q = q[ix].astype(np.float64)
    k1, k2 = len(first), len(second)
    a, b = slice(0, k1), slice(k1, k1 + k2)
    dot, qab = G[a, b].sum(), Q[a, b].sum()
    ca, cb = G[a, a].sum() - k1, G[b, b].sum() - k2
    out = np.full(k1 + k2, np.nan)
    for own, other, size, c_own, c_other, size_other in ((a, b, k1, ca, cb, k2), (b, a, k2, cb, ca, k1)):
        if size - 1 < 2:  # a side of one left: that image joined on its own link, nothing to bridge
            continue
        rows = np.arange(own.start, own.stop)
        d = dot - G[rows, other].sum(1)
        qq = qab - Q[rows, other].sum(1)
        c = c_own - 2 * (G[rows, own].sum(1) - G[rows, rows]) - G[rows, rows] + 1
        energy = qq + n * (c_other * (size - 1) + c * size_other + c * c_other)
        out[rows] = d * n / np.sqrt(np.maximum(energy, 1e-300)) / scale
    return out


def agglomerate(
    g: np.ndarray,
    q: np.ndarray,
    n: int,
    *,
    alpha: float = 1e-3,
    scale: float | None = None,
    r: np.ndarray | None = None,
    portrait: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Group images whose consensus residuals correlate significantly.

    Parameters
    ----------
    g, q : ndarray, shape (N, N)
        From :func:`pair_scores`.
    n : int
        Pixels per residual.
    alpha : float
        Family-wise false-alarm probability over all ``(N-1)²`` possible tests
        (twice that when portrait images can also be turned by 180 degrees).
    scale : float or None
        Null scale of the scores; None estimates it (:func:`null_scale`).
    r, portrait : ndarray, optional
        ``x_i · rot180(x_j)`` for pairs with a portrait image (:func:`turned_products`)
        and the boolean mask of portrait images: a portrait image (rotated by
        90 degrees for the analysis) may also be turned to 270.

    Returns
    -------
    labels : ndarray of int, shape (N,)
        Cluster index per image, 0.. in order of first member.
    info : dict
        ``z`` (the pair matrix, best orientation), ``threshold``, ``n_tests``,
        ``null_scale``, ``member_z`` and ``turned`` per image, and the
        ``merges`` tried in order (accepted or refused, with the reason).
    """
    count = len(g)
    portrait = np.zeros(count, bool) if portrait is None or r is None else np.asarray(portrait, bool)
    r = np.zeros_like(g) if r is None else r
    link = _Linkage(g.astype(np.float64), r.astype(np.float64), q.copy(), np.ones(count), portrait.copy(), n, 1.0)
    z = np.vstack([link.best(i, np.arange(count))[0] for i in range(count)])
    np.fill_diagonal(z, 0.0)
    scale = null_scale(z) if scale is None else scale
    link.scale = scale
    z = z / scale
    n_tests = max((count - 1) ** 2, 1) * (2 if portrait.any() else 1)
    tau = z_threshold(alpha, n_tests)
    members = {i: [i] for i in range(count)}
    turned = np.zeros(count, bool)
    score = z.copy()
    np.fill_diagonal(score, -np.inf)
    merges, member_z = [], np.full(count, np.nan)
    while len(members) > 1:
        a, b = divmod(int(np.argmax(score)), count)
        best = float(score[a, b])
        if not best > tau:
            break
        a, b = min(a, b), max(a, b)
        flip = bool(link.best(a, np.array([b]))[1][0])
        moved = b if link.flippable[b] else a  # the cluster turned by 180 degrees, if any
        trial = turned.copy()
        if flip:
            trial[members[moved]] ^= True
        joined = members[a] + members[b]
        loo = _member_z(joined, g, r, q, trial, n, scale)
        record = {"clusters": [sorted(members[a]), sorted(members[b])], "z": round(best, 3), "turned": flip}
        if loo.min() <= tau:
            weakest = joined[int(np.argmin(loo))]
            merges.append(record | {"accepted": False, "reason": f"image {weakest} would not be supported"})
            score[a, b] = score[b, a] = -np.inf
            continue
        bridges = _bridges(members[a], members[b], g, r, q, trial, n, scale)
        weakest_link = np.nanmin(bridges, initial=np.inf)
        if weakest_link <= tau and weakest_link < best / 2:  # the link collapses without one image: it may hold
            # both patterns (a composite); a link that merely dips under the threshold (a borderline merge, any
            # member left out) is not a bridge
            bridge = joined[int(np.nanargmin(bridges))]
            merges.append(record | {"accepted": False, "reason": f"only image {bridge} links the two groups"})
            score[a, b] = score[b, a] = -np.inf
            continue
        merges.append(record | {"accepted": True})
        if flip:
            link.turn(moved)
        turned = trial
        link.merge(a, b)
        members[a] = joined
        del members[b]
        member_z[joined] = loo
        score[b, :] = score[:, b] = -np.inf
        alive = np.array(sorted(members))
        row = link.best(a, alive)[0]
        row[alive == a] = -np.inf  # a changed cluster is a new hypothesis: earlier refusals are tested again
        score[a, alive] = score[alive, a] = row
    labels = np.empty(count, int)
    for index, (_, group) in enumerate(sorted(members.items(), key=lambda kv: min(kv[1]))):
        labels[group] = index
    info = {
        "z": z,
        "threshold": tau,
        "n_tests": n_tests,
        "null_scale": scale,
        "member_z": member_z,
        "turned": turned,
        "merges": merges,
    }
    return labels, info


@dataclass
class ClusterResult:
    """Images grouped by source camera; see :func:`cluster_images`.

    Attributes
    ----------
    images : list of dict
        Per usable image: path, sha256, rows, cols, rotation, jpeg_quality, cluster.
    clusters : list of dict
        Per cluster: id, members (indices into ``images``), paths, pairwise
        scores of the members, each member's z against the others' consensus.
    z : ndarray, shape (N, N)
        Pairwise scores (PCE = sign(z) z²).
    info : dict
        Analysis size, threshold, tests, null scale, notched frequencies, merges, settings, tool, times.
    failed : list of dict
        ``path`` and ``reason`` of each input that could not be used.
    """

    images: list[dict]
    clusters: list[dict]
    z: np.ndarray
    info: dict
    failed: list[dict] = field(default_factory=list)

    def as_dict(self, matrix: bool = True) -> dict:
        """JSON-ready record (the pair matrix rounded to 0.01 unless ``matrix`` is False)."""
        out = {
            **self.info,
            "images": self.images,
            "clusters": self.clusters,
            "failed": self.failed,
        }
        if matrix:
            out["similarity_z"] = np.round(self.z.astype(np.float64), 2).tolist()
        return out


def _analysis_crop(shape: tuple[int, int], size: tuple[int, int]) -> tuple[tuple[int, int], int]:
    """Crop in the image's own orientation and the rotation (degrees) that makes it landscape."""
    if shape[0] > shape[1]:
        return (size[1], size[0]), 90
    return size, 0


def _read_shapes(paths, max_pixels, on_error):
    kept = []
    for path in paths:
        try:
            _fmt, rows, cols, _ = sniff(read_bytes(path))
        except EvidenceError as exc:
            on_error(exc.path, exc.reason)
            continue
        except ValueError as exc:
            on_error(str(path), str(exc))
            continue
        if rows * cols > max_pixels:
            on_error(str(path), f"{cols}x{rows} (cols x rows) = {rows * cols:,} pixels exceeds the bound of "
                                     f"{max_pixels:,}")
            continue
        kept.append((Path(path), (rows, cols)))
    return kept


def _array(shape: tuple[int, int], settings: ClusterSettings, folder: str, name: str) -> np.ndarray:
    """A float32 array in memory, or a memory-mapped file in ``folder`` when larger than the settings allow."""
    if shape[0] * shape[1] * 4 <= settings.in_memory_bytes:
        return np.empty(shape, np.float32)
    return np.lib.format.open_memmap(os.path.join(folder, name + ".npy"), mode="w+", dtype=np.float32, shape=shape)


def _residual_matrix(shaped, size, settings, max_pixels, folder, fail, on_progress):
    """Residuals of the images at the analysis size and orientation, one per row; and the image records."""
    x = _array((len(shaped), size[0] * size[1]), settings, folder, "residuals")
    images, seen = [], {}
    for path, shape in shaped:
        crop, rotation = _analysis_crop(shape, size)
        try:
            ev = load_image(path, max_pixels=max_pixels)
            digest = ev.pixel_sha256()  # before the residual: its float pixels would need converting back
            repeated = repeated_image(ev, seen, digest)  # a copy would group with its original on content
            if repeated:
                raise EvidenceError(str(path), f"{repeated}: clustered once")
            spread = float(cropped_pixels(ev, crop, samples=True).var(axis=(0, 1)).max())
            if spread < rounding_variance(ev.bit_depth):  # uniform images pair on the codec's rounding
                raise EvidenceError(str(path), f"uniform: its pixels vary by {spread:.2g} (variance) over the "
                                    f"analysed region, less than {ev.bit_depth}-bit rounding; no sensor noise to "
                                    "measure")  # fmt: skip
            w = residual_of(ev, settings.params, crop)
        except EvidenceError as exc:
            fail(exc.path, exc.reason)
            continue
        x[len(images)] = (np.rot90(w, rotation // 90) if rotation else w).ravel()
        images.append(
            {
                "path": os.path.abspath(path),  # absolute when recorded: a relative path names nothing later
                "sha256": ev.sha256,
                "pixel_sha256": digest,  # a --to-db fingerprint's sources carry it (calibration checks)
                "rows": int(ev.shape[0]),
                "cols": int(ev.shape[1]),
                "rotation": rotation,
                "jpeg_quality": ev.quality.quality if ev.quality else None,
                "decoder_warnings": list(ev.warnings),
            }
        )
        on_progress(str(path))
    return x[: len(images)], images


def cluster_images(
    paths: Iterable[str | os.PathLike],
    settings: ClusterSettings = ClusterSettings(),
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_error: Callable[[str, str], None] = lambda path, reason: None,
    on_progress: Callable[[str], None] = lambda path: None,
) -> ClusterResult:
    """Group image files by source camera.

    Parameters
    ----------
    paths : iterable of path-like
        Image files (see :func:`spncli.identify.gather_inputs` for folders).
    settings : ClusterSettings
    max_pixels : int
    on_error : callable
        Called with each file that cannot be used and the reason; the rest go on.
    on_progress : callable
        Called with each file whose residual is done.

    Returns
    -------
    ClusterResult

    Raises
    ------
    ValueError
        If fewer than two images could be used.
    """
    started = utc_now()
    failed = []

    def fail(path, reason):
        failed.append({"path": str(path), "reason": reason})
        on_error(str(path), reason)

    shaped = _read_shapes(paths, max_pixels, fail)
    size = analysis_size([s for _, s in shaped], settings.crop)
    n = size[0] * size[1]
    with tempfile.TemporaryDirectory(prefix="spn-cluster-") as tmp:
        x, images = _residual_matrix(shaped, size, settings, max_pixels, tmp, fail, on_progress)
        if len(images) < 2:
            raise ValueError(f"clustering needs at least two usable images, got {len(images)}")
        spectra = _array((len(x), size[0] * (size[1] // 2 + 1)), settings, tmp, "spectra")
        spectra, notched = prepare(x, size, out=spectra)
        g, q = pair_scores(x, spectra, block=settings.block)
        portrait = np.array([im["rotation"] == 90 for im in images])
        r = turned_products(x, portrait, block=settings.block) if portrait.any() else None
        del x, spectra
    labels, link = agglomerate(g, q, n, alpha=settings.alpha, r=r, portrait=portrait)
    clusters = _describe(labels, link, images)
    for i, label in enumerate(labels):
        images[i]["cluster"] = int(label)
        if link["turned"][i]:
            images[i]["rotation"] = 270
        images[i]["member_z"] = None if np.isnan(link["member_z"][i]) else round(float(link["member_z"][i]), 3)
    info = {
        "analysis_rows": size[0],
        "analysis_cols": size[1],
        "n_images": len(images),
        "n_clusters": len(clusters),
        "n_tests": link["n_tests"],
        "z_threshold": round(link["threshold"], 4),
        "pce_threshold": round(link["threshold"] ** 2, 3),
        "null_scale": round(link["null_scale"], 4),
        "notched_frequencies": notched,
        "merges": link["merges"],
        "statistic": "z = PCE^(1/2) at zero shift of normalised residuals; energy from power spectra (Parseval)",
        "settings": settings.as_dict(),
        "started_utc": started,
        "finished_utc": utc_now(),
        **{"tool_" + key: value for key, value in tool_info().items()},
    }
    return ClusterResult(images, clusters, link["z"], info, failed)


def _describe(labels: np.ndarray, link: dict, images: list[dict]) -> list[dict]:
    z = link["z"]
    clusters = []
    for label in range(int(labels.max()) + 1):
        members = [int(i) for i in np.flatnonzero(labels == label)]
        pairs = [[a, b, round(float(z[a, b]), 3)] for k, a in enumerate(members) for b in members[k + 1 :]]
        clusters.append(
            {
                "id": label,
                "size": len(members),
                "members": members,
                "paths": [images[i]["path"] for i in members],
                "pairwise_z": pairs,
                "pairwise_pce": [[a, b, round(math.copysign(v * v, v), 2)] for a, b, v in pairs],
                "min_pair_z": min((p[2] for p in pairs), default=None),
                "member_z": [None if np.isnan(link["member_z"][i]) else round(float(link["member_z"][i]), 3)
                             for i in members],
            }
        )
    return clusters


def cluster_fingerprint(
    result: ClusterResult,
    cluster: dict,
    *,
    params: ResidualParams = ResidualParams(),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, dict]:
    """Maximum-likelihood fingerprint of a cluster's members, at the analysis size and orientation.

    Each member is read again and must have the SHA-256 it had when clustered.

    Returns
    -------
    k : ndarray, float32, shape (rows, cols)
    meta : dict
        Provenance: the sources (path, SHA-256, rotation), the cluster's
        scores, the clustering settings and the tool.

    Raises
    ------
    EvidenceError
        If a member cannot be read or has changed since clustering.
    """
    size = (result.info["analysis_rows"], result.info["analysis_cols"])
    acc = FingerprintAccumulator(params)
    sources = []
    for i in cluster["members"]:
        image = result.images[i]
        ev = load_image(image["path"], max_pixels=max_pixels)
        if ev.sha256 != image["sha256"]:
            raise EvidenceError(image["path"], "changed since it was clustered (SHA-256 differs); not used")
        crop, rotation = _analysis_crop(ev.shape, size)[0], image["rotation"]
        pixels = cropped_pixels(ev, crop)
        if rotation:
            pixels = np.ascontiguousarray(np.rot90(pixels, rotation // 90))
        acc.add(pixels, ev.saturation)
        sources.append({k: image[k] for k in ("path", "sha256", "pixel_sha256", "rows", "cols", "rotation",
                                              "jpeg_quality") if k in image})  # fmt: skip
    k = acc.finalize()
    meta = {
        "camera": None,
        "origin": "spn cluster (blind grouping, no reference camera)",
        "image_count": acc.count,
        "rows": int(k.shape[0]),
        "cols": int(k.shape[1]),
        "crop": [size[0], size[1]],
        "sources": sources,
        "cluster": {key: cluster[key] for key in ("id", "size", "min_pair_z", "member_z")},
        "clustering": {key: result.info[key] for key in ("z_threshold", "n_tests", "null_scale", "settings")},
        "estimator": "ML: sum(W*I)/sum(I^2) per channel, saturated pixels weight 0 (Chen et al. 2008)",
        "residual_params": params.as_dict(),
        "finished_utc": utc_now(),
        **{"tool_" + key: value for key, value in tool_info().items()},
    }
    return k, meta
