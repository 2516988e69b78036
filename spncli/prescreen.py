"""Pre-screening a residual against thousands of camera fingerprints with sign-binarized fingerprints.

Each fingerprint is reduced to the signs of its pixels, one bit per pixel (32 times
smaller than float32), following the binarization of Bayram, Sencar and Memon [1]_;
this plays the part of the compact "fingerprint digest" that Goljan, Fridrich and
Filler [2]_ search before the full correlation. A query residual is binarized the same
way at the same (zero-shift, centre-aligned) position, and each camera gets the
standardised sign-agreement score

    z = (agreements - disagreements) / sqrt(valid pixels)

computed with XOR and population counts over 64-bit words. Without a common source, z
is close to standard normal; with one, its mean is about ``(2/π) sqrt(PCE)`` for weak
correlations (sign correlation ``(2/π) arcsin ρ`` of jointly Gaussian values), so a
pair at the PCE threshold of 60 scores about 4.9. Cameras are ranked by z and the first
``top`` are returned as candidates for the exact PCE (:mod:`spncli.pce`); ``top=None``
returns every camera, which makes the pre-screen exact (no camera is left out).

The index keeps one packed sign vector per camera, grouped by fingerprint shape;
adding a camera appends one row (amortised O(size of that camera)). With ``crop`` only
the centre ``crop`` of each fingerprint is kept (smaller index, lower z: it scales
with the square root of the pixels kept).

References
----------
.. [1] S. Bayram, H. T. Sencar, N. Memon, "Efficient sensor fingerprint matching through
   fingerprint binarization", IEEE Trans. Information Forensics and Security 7(4),
   1404-1413, 2012. :doi:`10.1109/TIFS.2012.2192273`
.. [2] M. Goljan, J. Fridrich, T. Filler, "Managing a large database of camera
   fingerprints", Proc. SPIE 7541, Media Forensics and Security II, 754108, 2010.
   :doi:`10.1117/12.838378`
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .geometry import crop_offsets

__all__ = ["SignDigest", "Candidate", "sign_digest", "PrescreenIndex", "Prescreen", "parse_prescreen"]

_BLOCK_WORDS = 1 << 20
"""64-bit words scored per block (8 MB: temporaries stay small)."""


@dataclass(frozen=True)
class SignDigest:
    """The packed pixel signs of one fingerprint (the per-camera index entry).

    Attributes
    ----------
    shape : (rows, cols)
        Shape of the fingerprint the digest was made from.
    region : (row, col, rows, cols)
        The part of the fingerprint kept (all of it unless cropped).
    words : ndarray, uint64, shape (ceil(rows * cols / 64),)
        Bit ``i`` (row-major over the region, most significant bit first within each byte)
        is 1 where the fingerprint is positive; padding bits are 0.
    k_sha256 : str or None
        SHA-256 of the fingerprint the digest was made from, where its record names it (records
        written before it was kept do not): the leak screen names a camera it ruled out by its signs
        with it, without opening the camera's file.
    """

    shape: tuple[int, int]
    region: tuple[int, int, int, int]
    words: np.ndarray
    k_sha256: str | None = None

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes)


@dataclass(frozen=True)
class Candidate:
    """A camera ranked by the pre-screen.

    Attributes
    ----------
    camera : str
    z : float
        Standardised sign agreement (about N(0, 1) for an unrelated camera).
    rotation : int
        Degrees (0, 90, 270) the residual was turned for the best score.
    """

    camera: str
    z: float
    rotation: int


def _pack(bits: np.ndarray) -> np.ndarray:
    """Boolean array -> uint64 words (zero padded)."""
    packed = np.packbits(bits.ravel())
    pad = (-packed.size) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros(pad, np.uint8)])
    return packed.view(np.uint64)


def _region(shape: tuple[int, int], crop: tuple[int, int] | None) -> tuple[int, int, int, int]:
    if crop is None:
        return 0, 0, shape[0], shape[1]
    size = (min(crop[0], shape[0]), min(crop[1], shape[1]))
    r, c = crop_offsets(shape, size)
    return r, c, size[0], size[1]


def sign_digest(k: np.ndarray, crop: tuple[int, int] | None = None) -> SignDigest:
    """Signs of a fingerprint's pixels, packed one bit per pixel [1]_.

    Parameters
    ----------
    k : ndarray, float, shape (M, N)
    crop : (rows, cols) or None
        Keep only the centre crop (even offsets, as everywhere in spn).

    Returns
    -------
    SignDigest
    """
    if k.ndim != 2:
        raise ValueError(f"a fingerprint is 2-D (rows x cols), got shape {k.shape}")
    r, c, h, w = region = _region(k.shape, crop)
    return SignDigest(tuple(int(s) for s in k.shape), region, _pack(k[r : r + h, c : c + w] > 0))


class _Group:
    """The digests of one fingerprint geometry, stacked in a growable array."""

    def __init__(self, width: int):
        self.cameras: list[str] = []
        self.words = np.zeros((4, width), np.uint64)

    def add(self, camera: str, words: np.ndarray) -> None:
        n = len(self.cameras)
        if n == self.words.shape[0]:  # double the capacity: adding stays O(one camera) on average
            grown = np.zeros((2 * n, self.words.shape[1]), np.uint64)
            grown[:n] = self.words
            self.words = grown
        self.words[n] = words
        self.cameras.append(camera)


class PrescreenIndex:
    """Sign-binarized fingerprints of many cameras, queried by a residual.

    Parameters
    ----------
    crop : (rows, cols) or None
        Keep only the centre crop of each fingerprint (default: all of it).

    Examples
    --------
    >>> index = PrescreenIndex()
    >>> index.add("cam-1", k1)                       # doctest: +SKIP
    >>> [c.camera for c in index.query(w, top=20)]   # doctest: +SKIP
    """

    def __init__(self, crop: tuple[int, int] | None = None):
        self.crop = crop
        self._groups: dict[tuple, _Group] = {}
        self._names: set[str] = set()

    def __len__(self) -> int:
        return len(self._names)

    @property
    def nbytes(self) -> int:
        """Bytes held by the sign vectors (the index proper)."""
        return sum(g.words[: len(g.cameras)].nbytes for g in self._groups.values())

    def cameras(self) -> list[str]:
        return [c for g in self._groups.values() for c in g.cameras]

    def add(self, camera: str, k: np.ndarray) -> SignDigest:
        """Binarize a fingerprint and add it; returns its digest (to store beside the fingerprint)."""
        digest = sign_digest(k, self.crop)
        self.add_digest(camera, digest)
        return digest

    def add_digest(self, camera: str, digest: SignDigest) -> None:
        """Add a camera from a digest computed earlier (e.g. read from the database).

        Raises
        ------
        ValueError
            If the camera is already in the index.
        """
        if camera in self._names:
            raise ValueError(f"camera {camera!r} is already in the pre-screen index")
        key = (digest.shape, digest.region)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(digest.words.size)
        group.add(camera, digest.words)
        self._names.add(camera)

    def query(
        self, residual: np.ndarray, *, top: int | None = 100, rotations: bool = True
    ) -> list[Candidate]:
        """Cameras ranked by sign agreement with a residual, best first.

        Parameters
        ----------
        residual : ndarray, float, shape (m, n)
            The probe's noise residual, aligned with the fingerprints as
            :func:`spncli.pce.score` aligns it at zero shift (centre crop or
            centre placement; 90/270-degree turns when orientations differ).
        top : int or None, optional
            How many candidates to return; None returns every camera (exact:
            the full PCE then runs on all of them).
        rotations : bool, optional
            Try the residual turned by 90 and 270 degrees when its orientation
            differs from a fingerprint's, keeping the better score.

        Returns
        -------
        list of Candidate
        """
        if top is not None and top < 1:
            raise ValueError(f"top must be a positive number of cameras or None (all), got {top}")
        if residual.ndim != 2:
            raise ValueError(f"a residual is 2-D (rows x cols), got shape {residual.shape}")
        out: list[Candidate] = []
        for (shape, region), group in self._groups.items():
            n = len(group.cameras)
            best = np.full(n, -np.inf)
            turn = np.zeros(n, np.int16)
            for angle in _rotations(residual.shape, shape, rotations):
                bits, valid = _query_bits(np.rot90(residual, angle // 90), shape, region)
                z = _scores(group.words[:n], bits, valid)
                better = z > best
                best[better], turn[better] = z[better], angle
            out += [Candidate(c, float(s), int(a)) for c, s, a in zip(group.cameras, best, turn)]
        out.sort(key=lambda c: -c.z)
        return out if top is None else out[:top]


def _rotations(size: tuple[int, int], shape: tuple[int, int], rotations: bool) -> tuple[int, ...]:
    (rows, cols), (fr, fc) = size, shape
    if rotations and rows != cols and (rows > cols) != (fr > fc):
        return 90, 270
    return (0,)


def _query_bits(residual: np.ndarray, shape: tuple[int, int], region: tuple[int, int, int, int]):
    """Signs and validity of the residual over a digest's region, placed as the zero-shift PCE places it."""
    r0, c0, h, w = region
    size = (min(residual.shape[0], shape[0]), min(residual.shape[1], shape[1]))
    cr, cc = crop_offsets(residual.shape, size)  # centre crop of a larger residual
    pr, pc = crop_offsets(shape, size)  # where it lies in the fingerprint
    canvas = np.zeros((h, w), np.float32)
    top, left = max(pr, r0), max(pc, c0)
    bottom, right = min(pr + size[0], r0 + h), min(pc + size[1], c0 + w)
    if bottom > top and right > left:
        canvas[top - r0 : bottom - r0, left - c0 : right - c0] = residual[
            cr + top - pr : cr + bottom - pr, cc + left - pc : cc + right - pc
        ]
    return _pack(canvas > 0), _pack(canvas != 0)  # zeros (outside the residual) carry no sign


def _scores(words: np.ndarray, bits: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """z = (agree - disagree) / sqrt(valid) for each row of ``words``."""
    n_valid = int(np.bitwise_count(valid).sum(dtype=np.int64))
    if n_valid == 0:
        return np.zeros(words.shape[0])
    full = n_valid == valid.size * 64
    step = max(1, _BLOCK_WORDS // max(words.shape[1], 1))
    disagree = np.empty(words.shape[0], np.int64)
    buf = np.empty((min(step, words.shape[0]), words.shape[1]), np.uint64)
    for i in range(0, words.shape[0], step):
        x = np.bitwise_xor(words[i : i + step], bits, out=buf[: len(words[i : i + step])])
        if not full:
            np.bitwise_and(x, valid, out=x)
        disagree[i : i + step] = np.bitwise_count(x).sum(axis=1, dtype=np.int64)
    return (n_valid - 2.0 * disagree) / math.sqrt(n_valid)


def parse_prescreen(text: str) -> int | None | bool:
    """``--prescreen``: ``off`` (False), ``exact`` (None: every camera scored) or a number of candidates K >= 1.

    Raises
    ------
    ValueError
        Any other value (the message names the allowed ones).
    """
    value = text.strip().lower()
    if value == "off":
        return False
    if value == "exact":
        return None
    if value.isascii() and value.isdigit() and int(value) >= 1:  # "²".isdigit() is True, int("²") fails
        return int(value)
    raise ValueError(f"{text!r} is not allowed: use off, exact, or a number of candidate cameras K >= 1")


class Prescreen:
    """The candidate cameras of each image: the ``top`` by sign agreement, then the exact PCE on them.

    Holds the database's path; the digests are read from the database's
    pre-screen records (:meth:`spncli.store.FingerprintStore.sign_digests`) on
    first use in each process, so the object pickles small for worker
    processes. Cameras without a valid record are always candidates (scored
    exactly), never left out.

    Parameters
    ----------
    db : str
        The database's path.
    top : int or None
        Candidates per image; None scores every camera (exact: the result is
        the brute-force one, with each camera's pre-screen score recorded).
    """

    def __init__(self, db: str, top: int | None):
        self.db, self.top = str(db), top
        self._index: PrescreenIndex | None = None
        self.unindexed: list[str] = []

    def __getstate__(self):
        return {"db": self.db, "top": self.top}

    def __setstate__(self, state):
        self.__init__(state["db"], state["top"])

    @property
    def setting(self) -> str:
        return "exact" if self.top is None else f"top {self.top}"

    def load(self, names) -> PrescreenIndex:
        """Read the digests of ``names`` (once per process); records which cameras have none."""
        if self._index is None:
            from .store import FingerprintStore

            digests, self.unindexed = FingerprintStore(self.db).sign_digests(list(names))
            index = PrescreenIndex()
            for camera in names:
                if camera in digests:
                    index.add_digest(camera, digests[camera])
            self._index = index
        return self._index

    def select(self, residual: np.ndarray, names, *, rotations: bool = True) -> tuple[set[str], dict[str, float]]:
        """(cameras to score exactly, each indexed camera's z) for one residual."""
        ranked = self.load(names).query(residual, top=None, rotations=rotations)
        z = {c.camera: round(c.z, 3) for c in ranked}
        keep = ranked if self.top is None else ranked[: self.top]
        return {c.camera for c in keep} | set(self.unindexed), z
