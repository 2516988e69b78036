"""Several images of one suspected source scored as one probe.

The probes ``I_1..I_n`` are pooled by the maximum-likelihood estimator of the
PRNU factor they share, the camera fingerprint's estimator [1]_ with each
image's own noise variance ``σ_i²`` (model ``W_i = I_i K + Ξ_i``, ``Ξ_i`` white
with variance ``σ_i²``; ``σ_i²`` estimated by the variance of the residual):

    K̂ = Σ W_i I_i / σ_i²  /  Σ I_i² / σ_i²

per colour channel, saturated pixels excluded, then the fingerprint
post-processing. With ``weighting="none"`` all ``σ_i`` are taken equal, which
is exactly :class:`spncli.fingerprint.FingerprintAccumulator`; that estimator
lets a textured or noisy probe drown a clean one. ``K̂`` is scored against
each camera fingerprint by PCE. The weights come from the probes alone, so
the null distribution of the score is unchanged.
The pooled score is one test per camera, with the false-alarm probability of
that one test [2]_; noise that is independent from image to image averages
out in ``K̂`` while the camera's pattern adds up, so the pooled PCE grows
with the number of probes.

References
----------
.. [1] M. Chen, J. Fridrich, M. Goljan, J. Lukáš, "Determining image origin
   and integrity using sensor noise", IEEE Trans. Inf. Forensics Security
   3(1), 74-90, 2008. :doi:`10.1109/TIFS.2007.916285`
.. [2] M. Goljan, J. Fridrich, T. Filler, "Large scale test of sensor
   fingerprint camera identification", Proc. SPIE 7254, 2009.
   :doi:`10.1117/12.805701`
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .evidence import Evidence
from .fingerprint import FingerprintAccumulator, saturation_mask
from .identify import Matcher, cropped_pixels, decision_text
from .pce import score
from .residual import ResidualParams, denoise_noise, postprocess, rgb_to_grey

__all__ = ["WEIGHTINGS", "PoolSizeError", "pooled_estimate", "pool_match"]

WEIGHTINGS = ("variance", "none")


class PoolSizeError(ValueError):
    """The probes do not share one size and orientation; ``str()`` names the files and sizes."""


def _check_sizes(evidences: Sequence[Evidence], crop: tuple[int, int] | None) -> None:
    listed = ", ".join(f"{ev.path} {ev.shape[1]}x{ev.shape[0]}" for ev in evidences)
    hint = "pool only images of one size and orientation (cols x rows: " + listed + ")"
    if crop is None and len({tuple(ev.shape) for ev in evidences}) > 1:
        raise PoolSizeError(f"pooled images differ in size; use --crop N for their common centre, or {hint}")
    if len({ev.shape[0] > ev.shape[1] for ev in evidences}) > 1:
        raise PoolSizeError(f"pooled images mix portrait and landscape; {hint}")
    if crop is not None:
        small = [f"{ev.path} {ev.shape[1]}x{ev.shape[0]}" for ev in evidences if ev.shape[0] < crop[0] or
                 ev.shape[1] < crop[1]]
        if small:
            raise PoolSizeError(f"crop {crop[1]}x{crop[0]} (cols x rows) is larger than: {', '.join(small)}")


def _variance_weighted(evidences: Sequence[Evidence], crop, params: ResidualParams) -> np.ndarray:
    num = den = None
    for ev in evidences:
        pixels = cropped_pixels(ev, crop)
        if num is None:
            num, den = np.zeros(pixels.shape, np.float64), np.zeros(pixels.shape, np.float64)
        elif pixels.shape != num.shape:
            raise PoolSizeError(f"{ev.path}: {pixels.shape[2]} channel(s), the other images {num.shape[2]}")
        for c in range(pixels.shape[2]):
            intensity = pixels[:, :, c]
            w = denoise_noise(intensity, params)
            weight = 1.0 / max(float(w.var(dtype=np.float64)), 1e-12)
            kept = np.where(saturation_mask(intensity, ev.saturation), np.float32(0), intensity)
            num[:, :, c] += weight * (w * kept)
            den[:, :, c] += weight * (kept * kept)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(den > 0, num / den, 0.0).astype(np.float32)
    return postprocess(rgb_to_grey(k), params)


def pooled_estimate(evidences: Sequence[Evidence], matcher: Matcher, *, weighting: str = "variance") -> np.ndarray:
    """The ML estimate ``K̂`` of the probes' common PRNU factor, at the matcher's crop.

    Parameters
    ----------
    evidences : sequence of Evidence
        All of one size and orientation (after the crop, if any).
    matcher : Matcher
        Supplies the crop and the residual parameters.
    weighting : {"variance", "none"}
        Each image weighted by the inverse variance of its residual, or all alike.

    Returns
    -------
    ndarray, float32, shape (rows, cols)

    Raises
    ------
    PoolSizeError
        If sizes or orientations differ (naming every file and its size), or
        no image is given.
    ValueError
        If ``weighting`` is not one of :data:`WEIGHTINGS`.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
    if not evidences:
        raise PoolSizeError("no image to pool")
    crop = matcher.settings.crop
    _check_sizes(evidences, crop)
    if weighting == "variance":
        return _variance_weighted(evidences, crop, matcher.settings.params)
    acc = FingerprintAccumulator(matcher.settings.params)
    for ev in evidences:
        try:
            acc.add(cropped_pixels(ev, crop), ev.saturation)
        except ValueError as exc:
            raise PoolSizeError(f"{ev.path}: {exc}") from None
    return acc.finalize()


def pool_match(
    evidences: Sequence[Evidence], matcher: Matcher, *, singles: bool = False, weighting: str = "variance"
) -> list[dict]:
    """Score the pooled probes against every fingerprint of ``matcher``: one record per camera.

    Parameters
    ----------
    evidences : sequence of Evidence
    matcher : Matcher
        Fingerprints and settings (threshold, crop, rotations, max_shift).
    singles : bool
        Also score each image alone (``single_pce`` per image and ``best_single_pce``).
    weighting : {"variance", "none"}
        See :func:`pooled_estimate`.

    Returns
    -------
    list of dict
        ``camera``, ``pce``, ``p_fa`` (of the one pooled test), ``decision``,
        ``n_images``, ``images`` (path, SHA-256, size, quality of each pooled
        image), alignment, settings and the fingerprint's SHA-256.
    """
    s = matcher.settings
    k_hat = pooled_estimate(evidences, matcher, weighting=weighting)
    single = [matcher.match(ev) for ev in evidences] if singles else None
    images = [
        {
            "path": os.path.abspath(ev.path),  # absolute when recorded: spn case verify re-hashes it from anywhere
            "sha256": ev.sha256,
            "rows": int(ev.shape[0]),
            "cols": int(ev.shape[1]),
            "jpeg_quality": ev.quality.quality if ev.quality else None,
            "decoder_warnings": list(ev.warnings),
        }
        for ev in evidences
    ]
    records = []
    for c, (camera, fp_sha) in enumerate(matcher.cameras):
        m = score(k_hat, matcher.spectra[camera], max_shift=s.max_shift, rotations=s.rotations)
        record = {
            "camera": camera,
            "pce": round(m.pce, 4),
            "ncc": round(m.ncc, 6),
            "p_fa": m.p_fa,
            "decision": decision_text(m.pce, s.threshold),
            "n_images": len(evidences),
            "rotation": m.rotation,
            "shift_row": m.shift[0],
            "shift_col": m.shift[1],
            "n_shifts": m.n_shifts,
            "rows": int(k_hat.shape[0]),
            "cols": int(k_hat.shape[1]),
            "fingerprint_sha256": fp_sha,
            "estimator": "pooled ML estimate sum(W*I/s2)/sum(I^2/s2) over the images, scored by PCE as one test",
            "weighting": weighting,
            **s.as_dict(),
            "images": images,
        }
        if single is not None:
            pces = [rows[c]["pce"] for rows in single]
            record["single_pce"] = pces
            record["best_single_pce"] = max(pces)
        records.append(record)
    return records
