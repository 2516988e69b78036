"""Residuals saved by ``spn extract`` / ``spn restore``, read back for matching with their provenance.

``spn extract`` and ``spn restore`` write ``STEM.npy`` (float32, rows x cols)
and, last, ``STEM.json``: the SHA-256 of the source image, the crop, the
residual kind, the array's own SHA-256 and shape. A saved residual is
evidence derived from evidence: it is matched only when that provenance is
beside it and agrees with the array, so every match row can name the source
image's SHA-256 and the residual kind it scored, exactly as when the image
itself is matched. Anything else is refused with one line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .evidence import EvidenceError, read_bytes

__all__ = ["SAVED_KINDS", "SavedQuality", "SavedResidual", "is_residual_file", "load_residual_file", "match_saved"]

SAVED_KINDS = ("classic", "compression-aware", "restored")
"""Residual kinds a saved residual may carry (``restored``: ``spn restore``'s output)."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_JSON = 4 << 20


@dataclass(frozen=True)
class SavedQuality:
    """The source JPEG's quality as the provenance recorded it (what match rows show)."""

    quality: int | None


@dataclass(frozen=True)
class SavedResidual:
    """A saved residual whose provenance was checked; quacks like :class:`spncli.evidence.Evidence` for matching.

    Attributes
    ----------
    path : str
        The ``.npy`` file as given.
    sha256 : str
        SHA-256 of the *source image* (what match rows record under ``sha256``).
    shape : (int, int)
        The source image's full frame (rows, cols), for orientation.
    residual : ndarray, float32
        The saved array.
    kind : str
        One of :data:`SAVED_KINDS`.
    crop : (int, int) or None
        The centre crop the residual was computed for (None: full frame).
    file_sha256 : str
        SHA-256 of the ``.npy`` file.
    provenance : dict
        The JSON beside it.
    provenance_sha256 : str
        SHA-256 of that JSON's bytes (every match row records it: the row depends on it).
    """

    path: str
    sha256: str
    shape: tuple[int, int]
    residual: np.ndarray = field(repr=False)
    kind: str
    crop: tuple[int, int] | None
    file_sha256: str
    provenance: dict = field(repr=False)
    size_bytes: int = 0
    provenance_sha256: str | None = None
    quality: SavedQuality | None = None
    pixels: None = None  # no image: no thumbnail

    @property
    def warnings(self) -> list[str]:
        """The decoder's warnings about the source image, as its provenance recorded them."""
        source = self.provenance.get("input") if isinstance(self.provenance.get("input"), dict) else {}
        found = source.get("decoder_warnings") or []
        return [str(w) for w in found] if isinstance(found, list) else []

    def info(self) -> dict:
        """What a match row records about the residual (the Matcher's residual ``info``)."""
        rinfo = self.provenance.get("residual_info") or {}
        restoration = self.provenance.get("restoration") or {}
        wiener = rinfo.get("wiener_applied", restoration.get("wiener_dft"))
        if wiener is None:
            wiener = (self.provenance.get("params") or {}).get("wiener_dft")
        return {"residual_kind": self.kind, "wiener_applied": wiener, "fallback": rinfo.get("fallback")}

    def row_fields(self) -> dict:
        """Extra fields of every match row of this residual."""
        restoration = self.provenance.get("restoration") or {}
        out = {
            "restored": self.kind == "restored",
            "residual_file": self.path,
            "residual_file_sha256": self.file_sha256,
            "residual_provenance_sha256": self.provenance_sha256,
            "residual_crop": list(self.crop) if self.crop else None,
        }
        if self.kind == "restored":
            out |= {
                "network_applied": restoration.get("network_applied"),
                "weights_sha256": restoration.get("weights_sha256"),
            }
        return out


def is_residual_file(path) -> bool:
    """Whether a path names a saved residual (by its ``.npy`` suffix)."""
    return str(path).lower().endswith(".npy")


def _kind_of(prov: dict) -> str | None:
    kind = prov.get("residual_kind")
    if kind is None and isinstance(prov.get("restoration"), dict):
        kind = "restored"  # spn restore's record: a restored residual
    return kind


def _crop_of(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"crop {value!r} is not [rows, cols]")


def load_residual_file(path) -> SavedResidual:
    """Read a saved residual and check it against the provenance JSON beside it.

    Parameters
    ----------
    path : path-like
        ``STEM.npy``; ``STEM.json`` must be in the same folder.

    Returns
    -------
    SavedResidual

    Raises
    ------
    EvidenceError
        One line naming the file: no provenance beside it, provenance
        unreadable or incomplete (source SHA-256, residual kind, shape,
        array SHA-256), array changed since it was written, not a 2-D
        float32 array, non-finite values.
    """
    path = str(path)
    data = read_bytes(path)
    file_sha = hashlib.sha256(data).hexdigest()
    side = Path(path).with_suffix(".json")
    how = "(spn extract and spn restore write it as STEM.json beside STEM.npy)"
    try:
        side_bytes = read_bytes(side, max_bytes=_MAX_JSON)
        prov = json.loads(side_bytes.decode("utf-8"))
    except EvidenceError as exc:
        raise EvidenceError(path, f"no valid provenance {side.name} beside it: {exc.reason} {how}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvidenceError(path, f"provenance {side.name} is not JSON ({exc}) {how}") from None
    if not isinstance(prov, dict):
        raise EvidenceError(path, f"provenance {side.name} is not a JSON object {how}")
    source = prov.get("input") if isinstance(prov.get("input"), dict) else {}
    kind = _kind_of(prov)
    problems = []
    if not isinstance(source.get("sha256"), str) or not _HEX64.fullmatch(source["sha256"]):
        problems.append("no SHA-256 of the source image (input.sha256)")
    if kind not in SAVED_KINDS:
        problems.append(f"residual kind {kind!r} is not one of {', '.join(SAVED_KINDS)}")
    restoration = prov.get("restoration")
    recorded = isinstance(restoration, dict) and isinstance(restoration.get("weights_sha256"), str)
    if kind == "restored" and not recorded:
        problems.append("residual kind 'restored' without the restoration record (weights SHA-256) spn restore writes")
    if kind in ("classic", "compression-aware") and restoration is not None:
        problems.append(f"residual kind {kind!r} with a restoration record (spn restore's residuals are 'restored')")
    if prov.get("array_sha256") != file_sha:
        problems.append("array_sha256 differs from the file's SHA-256 (changed since written, or another file's)")
    if (prov.get("files") or {}).get("array") not in (None, Path(path).name):
        problems.append(f"it names another array ({(prov.get('files') or {}).get('array')!r})")
    try:
        crop = _crop_of(prov.get("crop"))
        frame = (int(source["rows"]), int(source["cols"]))
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"crop or source frame unreadable ({exc})")
        crop, frame = None, (0, 0)
    if problems:
        raise EvidenceError(path, f"invalid provenance {side.name}: " + "; ".join(problems))
    try:
        buf = io.BytesIO(data)
        version = np.lib.format.read_magic(buf)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = header(buf)
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if not dtype.hasobject and need != len(data) - buf.tell():  # checked before anything is allocated
            raise ValueError(f"its header declares {list(shape)} {dtype} ({need:,} bytes), the file holds "
                             f"{len(data) - buf.tell():,} bytes of data")  # fmt: skip
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise EvidenceError(path, f"not a NumPy array file ({exc})") from None
    if arr.dtype != np.float32 or arr.ndim != 2 or list(arr.shape) != prov.get("shape"):
        what = "not a 2-D (rows x cols) array: " if arr.ndim != 2 else ""
        raise EvidenceError(
            path, f"{what}array is {arr.dtype} {list(arr.shape)}, provenance says float32 {prov.get('shape')}"
        )
    expected = frame if crop is None else (min(crop[0], frame[0]), min(crop[1], frame[1]))
    if arr.shape != expected:  # the rows name the source frame and crop: the array must be that region
        region = "source frame" if crop is None else f"centre crop {crop[0]}x{crop[1]} of the source frame"
        raise EvidenceError(
            path, f"array is {arr.shape[0]}x{arr.shape[1]}, but the provenance's {region} "
            f"{frame[0]}x{frame[1]} makes it {expected[0]}x{expected[1]}",
        )
    if not np.isfinite(arr).all():
        raise EvidenceError(path, "array has non-finite values")
    q = source.get("jpeg_quality")
    return SavedResidual(
        path=path,
        sha256=source["sha256"],
        shape=frame,
        residual=arr,
        kind=kind,
        crop=crop,
        file_sha256=file_sha,
        provenance=prov,
        size_bytes=len(data),
        provenance_sha256=hashlib.sha256(side_bytes).hexdigest(),
        quality=SavedQuality(q if isinstance(q, int) and not isinstance(q, bool) else None),
    )


def match_saved(matcher, saved: SavedResidual, *, surfaces: bool = False, screen=None) -> list[dict]:
    """Score a saved residual with a :class:`spncli.identify.Matcher`; rows name its kind and source.

    The residual is scored as saved. Its crop must be the matcher's
    (``--crop``) so that it meets the fingerprint's own centre crop; a
    full-frame residual is centre-cropped here when the matcher crops.
    ``screen(matcher, w)``, when given, returns the matcher narrowed to a
    pre-screen's candidates, the fields every row then records and each
    camera's score (:func:`spncli.jobs._screened`), as for an image.

    Raises
    ------
    EvidenceError
        A crop that disagrees with ``--crop``, or a matcher that would
        restore (a saved residual has no pixels to restore from).
    """
    from .geometry import centre_crop

    s = matcher.settings
    if matcher.restorer is not None:
        raise EvidenceError(saved.path, "a saved residual has no pixels to restore: match it without --restore")
    w = saved.residual
    want = None if s.crop is None else (min(s.crop[0], saved.shape[0]), min(s.crop[1], saved.shape[1]))
    held = None if saved.crop is None else (min(saved.crop[0], saved.shape[0]), min(saved.crop[1], saved.shape[1]))
    if saved.crop is not None and held != want:
        got = f"{saved.crop[0]}x{saved.crop[1]}"
        asked = "no --crop" if want is None else f"--crop {want[0]}x{want[1]}"
        raise EvidenceError(saved.path, f"residual was saved for a centre crop of {got}, {asked} asked: "
                                        f"match it with --crop {got}")  # fmt: skip
    if saved.crop is None and want is not None:
        if w.shape != saved.shape:
            raise EvidenceError(saved.path, f"residual is {w.shape}, its source frame {saved.shape}")
        w = np.ascontiguousarray(centre_crop(w, want))
    info = saved.info()
    screened, z = {}, {}
    if screen is not None:
        matcher, screened, z = screen(matcher, w)
    records = matcher.match(saved, surfaces=surfaces, residual=(w, False, info))
    extra = saved.row_fields()
    return [r | extra | (screened | {"prescreen_z": z.get(r["camera"])} if screened else {}) for r in records]

