"""Classic, compression-aware and restored residuals, per quality: TPR, false positives, AUC, median PCE.

Used by ``spn eval`` (probe files with known cameras) and by training
(validation on probes re-compressed in memory).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .degrade import DegradeSettings, encode
from .evidence import Evidence, decode, load_image
from .geometry import centre_crop
from .identify import cropped_pixels, residual_with_info
from .jpegdomain import AwareSettings
from .pce import FingerprintSpectrum, score
from .residual import ResidualParams, grey_residual, postprocess, zero_mean_cfa

__all__ = [
    "auc",
    "PairScore",
    "score_probe",
    "summarize",
    "camera_for",
    "quality_label",
    "degraded_in_memory",
    "METHODS",
    "COLUMNS",
    "ALL_COLUMNS",
]

METHODS = ("classic", "classic_nowiener", "aware", "restored")
"""Residuals compared, in table order: classic, classic without the spectral Wiener filter,
compression-aware (:mod:`spncli.jpegdomain`), GAN-restored."""

COLUMNS = [  # the table of `spn eval` and of the model card
    "quality",
    "matching_pairs",
    "non_matching_pairs",
    "classic_tpr",
    "restored_tpr",
    "classic_fp",
    "restored_fp",
    "classic_auc",
    "restored_auc",
    "classic_median",
    "restored_median",
]
ALL_COLUMNS = ["quality", "matching_pairs", "non_matching_pairs"] + [
    f"{m}_{stat}" for stat in ("tpr", "fp", "auc", "median") for m in METHODS
]


def auc(pos, neg) -> float | None:
    """Area under the ROC curve of scores (ties count half); None without both classes."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not pos.size or not neg.size:
        return None
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


@dataclass(frozen=True)
class PairScore:
    """PCE of one probe against one camera, per residual (None where not computed).

    ``aware_kind`` is the residual kind the compression-aware request gave
    (``"classic"`` for a non-JPEG probe).
    """

    image: str
    quality: str
    true_camera: str | None
    camera: str
    pce_classic: float
    pce_restored: float | None
    pce_classic_nowiener: float | None = None
    pce_aware: float | None = None
    aware_kind: str | None = None


def score_probe(
    ev: Evidence,
    label: str,
    true_camera: str | None,
    spectra: dict[str, FingerprintSpectrum],
    crop: tuple[int, int] | None,
    restorer=None,
    params: ResidualParams = ResidualParams(),
    tile: int = 1024,
    *,
    aware: AwareSettings | None = None,
    data: bytes | None = None,
) -> list[PairScore]:
    """Score one probe against every fingerprint with the classic and (if given) the restored residual.

    With ``aware`` settings, also the classic residual without the spectral
    Wiener filter and the compression-aware residual (full frame on the
    file's grid, then cropped); ``data`` may pass the probe's bytes when it
    was re-compressed in memory.
    """
    pixels = cropped_pixels(ev, crop)
    grey = grey_residual(pixels, params)
    classic = postprocess(grey, params)
    restored = restorer.restore(ev, pixels, grey=grey, params=params, tile=tile)[0] if restorer else None
    nowiener = aware_w = kind = None
    if aware is not None:
        nowiener = zero_mean_cfa(grey) if params.zero_mean else grey
        aware_w, info = residual_with_info(ev, params, crop, kind="compression-aware", aware=aware, data=data)
        kind = info["residual_kind"]
    out = []
    for cam, spec in spectra.items():
        out.append(
            PairScore(
                ev.path,
                label,
                true_camera,
                cam,
                score(classic, spec).pce,
                None if restored is None else score(restored, spec).pce,
                None if nowiener is None else score(nowiener, spec).pce,
                None if aware_w is None else score(aware_w, spec).pce,
                kind,
            )
        )
    return out


def summarize(
    pairs: Iterable[PairScore], threshold: float = 60.0, positive: Callable[[str], bool] = lambda cam: True
) -> list[dict]:
    """One row per quality label: both methods side by side.

    Matching pairs count only for cameras where ``positive(camera)`` is true
    (e.g. validation units never used in training); non-matching pairs count
    for all.
    """
    groups: dict[str, list[PairScore]] = {}
    for p in pairs:
        groups.setdefault(p.quality, []).append(p)
    rows = []
    for label in sorted(groups, key=_quality_key, reverse=True):
        ps = groups[label]
        row = {"quality": label}
        for method in METHODS:
            vals = [(p, getattr(p, f"pce_{method}")) for p in ps]
            if any(v is None for _, v in vals):
                continue
            pos = [v for p, v in vals if p.true_camera == p.camera and positive(p.camera)]
            neg = [v for p, v in vals if p.true_camera is not None and p.true_camera != p.camera]
            row |= {
                f"{method}_tpr": float(np.mean(np.array(pos) > threshold)) if pos else None,
                f"{method}_fp": int(np.sum(np.array(neg) > threshold)),
                f"{method}_auc": auc(pos, neg),
                f"{method}_median": float(np.median(pos)) if pos else None,
            }
        row["matching_pairs"] = sum(p.true_camera == p.camera and positive(p.camera) for p in ps)
        row["non_matching_pairs"] = sum(p.true_camera is not None and p.true_camera != p.camera for p in ps)
        rows.append(row)
    return rows


def _quality_key(label: str) -> float:
    m = re.search(r"\d+", label)
    return float(m.group()) if m else 1000.0


def camera_for(path: str | Path, cameras: Iterable[str]) -> str | None:
    """The longest camera id that starts the file name followed by ``_`` or ``-`` (None if none)."""
    name = Path(path).name
    best = None
    for cam in cameras:
        if (
            name.startswith(cam)
            and name[len(cam) : len(cam) + 1] in ("_", "-", ".")
            and (best is None or len(cam) > len(best))
        ):
            best = cam
    return best


def quality_label(ev: Evidence) -> str:
    """``q70`` from a ``spn degrade`` name, else the estimated JPEG quality, else the format."""
    m = re.search(r"\.q(\d+)\.", Path(ev.path).name)
    if m:
        return f"q{int(m.group(1))}"
    if ev.quality is not None:
        return f"q{ev.quality.quality}"
    return ev.format


def degraded_in_memory(path: str | Path, quality: int, subsampling: str = "420") -> Evidence:
    """Load an image and re-compress it at ``quality`` in memory (nothing is written)."""
    ev = load_image(path)
    data = encode(ev.pixels, DegradeSettings(quality, "jpeg", subsampling))
    return decode(data, f"{Path(path).name}.q{quality}.jpg")


class ValidationSet:
    """Probes re-compressed in memory with fingerprints of their cameras, for training validation.

    Parameters
    ----------
    flats, naturals : Path
        Folders of flat-field and natural images named ``<camera>_<number>.*``.
    units : str
        Only cameras whose id ends with this (e.g. ``"_1"``: units never used in training).
    qualities : sequence of int
    crop : (rows, cols)
    """

    def __init__(self, flats, naturals, units: str = "_1", qualities=(50, 30), crop=(1024, 1024)):
        from .fingerprint import FingerprintAccumulator

        def cam(p):
            return Path(p).stem.rsplit("_", 1)[0]

        flats = sorted(Path(flats).glob("*"))
        cams = sorted({cam(p) for p in flats if cam(p).endswith(units)})
        self.crop = crop
        self.spectra = {}
        for c in cams:
            acc = FingerprintAccumulator()
            for p in flats:
                if cam(p) == c:
                    acc.add(np.ascontiguousarray(centre_crop(load_image(p).pixels, crop)))
            self.spectra[c] = FingerprintSpectrum(acc.finalize())
        self.probes = [
            (degraded_in_memory(p, q), f"q{q}", cam(p))
            for p in sorted(Path(naturals).glob("*"))
            if cam(p) in cams
            for q in qualities
        ]

    def __call__(self, generator) -> dict:
        """Median matching PCE per quality, classic and restored; ``score`` = mean restored/classic ratio."""
        import torch

        from .restoration import Restorer

        restorer = Restorer(generator.eval(), {"receptive_radius": 112, "postprocess": {}}, "", torch.device("cpu"))
        pairs = []
        for ev, label, true in self.probes:
            pairs += score_probe(ev, label, true, self.spectra, self.crop, restorer)
        rows = summarize(pairs)
        ratios = [r["restored_median"] / max(r["classic_median"], 1e-6) for r in rows]
        return {"rows": rows, "score": float(np.mean(ratios))}
