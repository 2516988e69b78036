"""Several images of one suspected source scored as one probe.

Model: each probe's residual is ``W_i = I_i K + Ξ_i`` with one PRNU factor
``K`` shared by all, ``Ξ_i`` white with variance ``σ_i²`` (estimated by the
variance of the residual) [1]_. For a known fingerprint ``K`` the
Neyman-Pearson detector of that model correlates ``K`` with the matched-filter
statistic [1]_ [3]_

    T = Σ_i W_i I_i / σ_i²

(per colour channel, saturated pixels excluded, then the fingerprint
post-processing), the single-image detector's correlation of ``W`` with
``I K`` summed over the images. With ``weighting="none"`` all ``σ_i`` are
taken equal, which lets a textured or noisy probe drown a clean one. A
residual variance below :data:`spncli.residual.NOISE_FLOOR` (that of rounding
to 8 bits) is no measurement of sensor noise (a uniform or synthetic image):
the weight is capped there, whatever the bit depth (a finer cap would let a
uniform 16-bit image take the pool over again), and each record gives every
image's share of the weight. ``T`` is scored against each camera fingerprint
by PCE. The weights come from the
probes alone, so the null distribution of the score is unchanged. The pooled
score is one test per camera, with the false-alarm probability of that one
test [2]_; noise that is independent from image to image averages out in
``T`` while the camera's pattern adds up, so the pooled PCE grows with the
number of probes.

``T`` is not the maximum-likelihood estimate of ``K`` (``T / Σ I_i²/σ_i²``,
the fingerprint's estimator): dividing by the probes' summed squared intensity
gives the dark parts of natural images, where the pattern is weakest, as much
weight as the bright ones. Earlier versions pooled that estimate (their
records say "pooled ML estimate" under ``estimator``); on the Dresden units it
scored below ``T`` in most pools and, for a single image, far below the plain
match (README, ``spn match --pool``).

References
----------
.. [1] M. Chen, J. Fridrich, M. Goljan, J. Lukáš, "Determining image origin
   and integrity using sensor noise", IEEE Trans. Inf. Forensics Security
   3(1), 74-90, 2008. :doi:`10.1109/TIFS.2007.916285`
.. [2] M. Goljan, J. Fridrich, T. Filler, "Large scale test of sensor
   fingerprint camera identification", Proc. SPIE 7254, 2009.
   :doi:`10.1117/12.805701`
.. [3] J. Fridrich, "Digital image forensics", IEEE Signal Processing
   Magazine 26(2), 26-37, 2009. :doi:`10.1109/MSP.2008.931078`
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .evidence import Evidence
from .fingerprint import saturation_mask
from .geometry import alignment_note
from .identify import Matcher, cropped_pixels, decision_text, frame_turned
from .pce import score
from .residual import NOISE_FLOOR, denoise_noise, postprocess, rgb_to_grey

__all__ = ["WEIGHTINGS", "PoolSizeError", "pooled_statistic", "pool_match"]

WEIGHTINGS = ("variance", "none")

DOMINANT_SHARE = 0.5
"""An image carrying more of the weight than this (in a pool of two: more than 75%) is named in a note."""


class PoolSizeError(ValueError):
    """The probes do not share one size and orientation; ``str()`` names the files and sizes."""


def _check_sizes(evidences: Sequence[Evidence], crop: tuple[int, int] | None) -> None:
    listed = ", ".join(f"{ev.path} {ev.shape[1]}x{ev.shape[0]}" for ev in evidences)
    hint = "pool only images of one size and orientation (cols x rows: " + listed + ")"
    if crop is None and len({tuple(ev.shape) for ev in evidences}) > 1:
        raise PoolSizeError(f"pooled images differ in size; use --crop N for their common centre, or {hint}")
    if len({ev.shape[0] > ev.shape[1] for ev in evidences}) > 1:
        raise PoolSizeError(f"pooled images mix portrait and landscape; {hint}")
    if len({ev.samples.shape[2] for ev in evidences}) > 1:
        channels = ", ".join(f"{ev.path} {ev.samples.shape[2]}" for ev in evidences)
        raise PoolSizeError(f"pooled images mix grey and colour; pool images of one kind (channels: {channels})")
    if crop is not None:
        small = [f"{ev.path} {ev.shape[1]}x{ev.shape[0]}" for ev in evidences if ev.shape[0] < crop[0] or
                 ev.shape[1] < crop[1]]
        if small:
            raise PoolSizeError(f"crop {crop[1]}x{crop[0]} (cols x rows) is larger than: {', '.join(small)}")


def pooled_statistic(
    evidences: Sequence[Evidence], matcher: Matcher, *, weighting: str = "variance"
) -> tuple[np.ndarray, list[float]]:
    """The probes' matched-filter statistic ``T = Σ W_i I_i / σ_i²`` at the matcher's crop (see the module), and
    each image's share of the weight.

    Parameters
    ----------
    evidences : sequence of Evidence
        All of one size and orientation (after the crop, if any).
    matcher : Matcher
        Supplies the crop and the residual parameters.
    weighting : {"variance", "none"}
        Each image weighted by the inverse variance of its residual (per channel), or all alike.

    Returns
    -------
    statistic : ndarray, float32, shape (rows, cols)
        Grey, CFA zero-meaned and Wiener-filtered like a fingerprint.
    shares : list of float
        Each image's share of the weight, the mean over its channels; they sum to 1.

    Raises
    ------
    PoolSizeError
        If sizes, orientations or channel counts differ (naming every file and its size), or no image is
        given.
    ValueError
        If ``weighting`` is not one of :data:`WEIGHTINGS`.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
    if not evidences:
        raise PoolSizeError("no image to pool")
    crop, params = matcher.settings.crop, matcher.settings.params
    _check_sizes(evidences, crop)
    total, weights = None, []
    for ev in evidences:
        pixels = cropped_pixels(ev, crop)
        if total is None:
            total = np.zeros(pixels.shape, np.float64)
        for c in range(pixels.shape[2]):
            intensity = pixels[:, :, c]
            w = denoise_noise(intensity, params)
            weight = 1.0 / max(float(w.var(dtype=np.float64)), NOISE_FLOOR) if weighting == "variance" else 1.0
            w *= np.where(saturation_mask(intensity, ev.saturation), np.float32(0), intensity)
            total[:, :, c] += weight * w
            weights.append(weight)
    per_channel = np.asarray(weights).reshape(len(evidences), -1)
    shares = (per_channel / per_channel.sum(axis=0)).mean(axis=1)
    return postprocess(rgb_to_grey(total.astype(np.float32)), params), [float(x) for x in shares]


def pool_notes(evidences: Sequence[Evidence], shares: Sequence[float]) -> list[str]:
    """What a reader of a pooled result must know besides the score: one image pooled alone, or one image
    carrying most of the weight (:data:`DOMINANT_SHARE`)."""
    if len(evidences) == 1:
        return [f"one image pooled ({evidences[0].path}): its pooled statistic is its residual weighted by its "
                "intensity; the calibrated test for one image is the plain match, without --pool"]  # fmt: skip
    bound = max(DOMINANT_SHARE, 1.5 / len(evidences))  # two images: above 75%; three or more: above half
    heavy = [(ev.path, share) for ev, share in zip(evidences, shares) if share > bound]
    if heavy:
        path, share = heavy[0]
        return [f"{path} carries {share:.0%} of the pooled weight (its residual varies least, as a flat or "
                "uniform image's does): check that it belongs with the others (--singles scores each alone)"]
    return []


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
        See :func:`pooled_statistic`.

    Returns
    -------
    list of dict
        ``camera``, ``pce``, ``p_fa`` (of the one pooled test), ``decision``,
        ``n_images``, ``images`` (path, SHA-256, size, quality and weight
        share of each pooled image), ``notes`` (:func:`pool_notes`), rotation,
        alignment, settings and the fingerprint's SHA-256.
    """
    s = matcher.settings
    statistic, shares = pooled_statistic(evidences, matcher, weighting=weighting)
    single = [matcher.match(ev) for ev in evidences] if singles else None
    images = [
        {
            "path": os.path.abspath(ev.path),  # absolute when recorded: spn case verify re-hashes it from anywhere
            "sha256": ev.sha256,
            "rows": int(ev.shape[0]),
            "cols": int(ev.shape[1]),
            "jpeg_quality": ev.quality.quality if ev.quality else None,
            "decoder_warnings": list(ev.warnings),
            "weight_share": round(share, 4),
        }
        for ev, share in zip(evidences, shares)
    ]
    notes = pool_notes(evidences, shares)
    records = []
    for c, (camera, fp_sha) in enumerate(matcher.cameras):
        frame = matcher.frames[camera]
        m = score(statistic, matcher.spectra[camera], max_shift=s.max_shift, rotations=s.rotations,
                  turned=frame_turned(evidences[0].shape, frame))  # as a plain match of these images turns
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
            "rows": int(statistic.shape[0]),
            "cols": int(statistic.shape[1]),
            "fingerprint_sha256": fp_sha,
            "alignment": alignment_note(evidences[0].shape, frame, s.max_shift),
            "notes": notes,
            "estimator": "matched filter sum(W*I/s2) over the images (Chen et al. 2008), scored by PCE as one test",
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
