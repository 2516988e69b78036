"""A self-contained HTML report of a case: what an investigator hands over.

Pictures (a thumbnail of each matched image, correlation surfaces around each
peak, 1:1 residual details, the PCE on a labelled log scale) are
embedded as data URIs, so the single file opens anywhere, offline. A small
inline script records in the page how many pictures decoded, and when every
one has either decoded or failed (used by the tests' headless browser;
harmless elsewhere).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .calibration import summary_rows
from .casefile import Case
from .modelcards import describe, find_card
from .pce import SURFACE, false_alarm_probability
from .plots import png_bytes
from .provenance import utc_now
from .store import FingerprintStore, StoreError

__all__ = [
    "surface_png", "build_report", "cluster_section", "pool_section", "pce_scale_svg", "format_probability",
    "normalized_path",
]  # fmt: skip

SMALLEST_PROBABILITY = 1e-300
"""Below this a false-alarm probability is written as a bound (``< 1e-300``): doubles underflow to 0 there."""


def format_probability(p: float | None) -> str:
    """A probability for the report: ``3.1e-12``; a bound ``< 1e-300`` where it underflows; never ``0.00e+00``."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    if p < SMALLEST_PROBABILITY:
        return f"< {SMALLEST_PROBABILITY:.0e}"
    return f"{p:.2e}"


def normalized_path(path: str | os.PathLike | None) -> str:
    """The path with ``.`` and ``..`` removed lexically (links are not followed: the path named is kept).

    A relative path (recorded by an older version) stays relative: the folder it was relative to is not
    known here, and joining it to the folder the report is made in would name another file.
    """
    if path is None:
        return ""
    return os.path.normpath(os.fspath(path))


def surface_png(surface: np.ndarray, scale: int = 6) -> bytes:
    """Heat map of a correlation surface (units of noise std), peak marked, with a colour bar."""
    s = np.clip(surface, -5, None)
    top = max(float(s.max()), 5.0)
    norm = np.clip((s + 5) / (top + 5) * 255, 0, 255).astype(np.uint8)
    img = cv2.applyColorMap(
        cv2.resize(norm, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_VIRIDIS
    )
    c = (SURFACE // 2) * scale + scale // 2
    cv2.circle(img, (c, c), 3 * scale, (255, 255, 255), 1, cv2.LINE_AA)
    bar = np.linspace(255, 0, img.shape[0]).astype(np.uint8)[:, None].repeat(12, axis=1)
    bar = cv2.applyColorMap(bar, cv2.COLORMAP_VIRIDIS)
    canvas = np.full((img.shape[0], img.shape[1] + 70, 3), 255, np.uint8)
    canvas[:, : img.shape[1]] = img
    canvas[:, img.shape[1] + 6 : img.shape[1] + 18] = bar
    for frac, label in ((0.0, f"{top:.0f}"), (1.0, "-5")):
        y = int(frac * (img.shape[0] - 12)) + 10
        cv2.putText(canvas, label, (img.shape[1] + 22, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return png_bytes(canvas)


def _data_uri(data: bytes) -> str:
    kind = "jpeg" if data[:3] == b"\xff\xd8\xff" else "png"
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;width:100%}td,th{border:1px solid #ddd;padding:4px 6px;
font-size:.9em;text-align:left;vertical-align:top}th{background:#f3f3f3}
.ok{color:#0a6b2d;font-weight:600}.meta td:first-child{width:14em;color:#555}
.match{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start;border:1px solid #ddd;padding:.8em;margin:.8em 0}
.match>div{flex:0 0 360px}.match figure{margin:0;max-width:320px}
.bar{background:#eee;height:12px;width:260px;position:relative}.bar span{position:absolute;left:0;top:0;bottom:0;
background:#2b7bb9}.bar i{position:absolute;top:-3px;bottom:-3px;border-left:2px solid #c00}
code{font-size:.85em;word-break:break-all}.note{color:#555;font-size:.9em}
.unverified{border:4px solid #c00;background:#fee;padding:.5em 1em;margin-bottom:1em}.unverified h2{color:#c00;margin:0}
"""

_SCRIPT = """<script>
(function(){function check(){var im=document.images,ok=0,bad=0;for(var i=0;i<im.length;i++){if(!im[i].complete)
continue;if(im[i].naturalWidth>0)ok++;else bad++;}var b=document.body;b.setAttribute('data-images-loaded',ok+'/'+
im.length);b.setAttribute('data-images-failed',String(bad));if(ok+bad<im.length)setTimeout(check,50);
else b.setAttribute('data-images-settled','yes');}window.addEventListener('load',check);})();
</script>"""


def pce_scale_svg(pce: float, threshold: float, width: int = 360) -> str:
    """Inline SVG: the PCE as a bar on a labelled log axis (decades), the decision threshold marked and labelled."""
    top = 10 ** math.ceil(math.log10(max(threshold * 10, pce * 1.5, 10.0)))
    left, right, y0 = 10, width - 14, 34

    def x(v: float) -> float:
        return left + (right - left) * math.log10(max(v, 1.0)) / math.log10(top)

    ticks = "".join(
        f'<line x1="{x(10**d):.1f}" y1="{y0}" x2="{x(10**d):.1f}" y2="{y0 + 5}" stroke="#444"/>'
        f'<text x="{x(10**d):.1f}" y="{y0 + 17}" font-size="10" text-anchor="middle">{10**d:g}</text>'
        for d in range(round(math.log10(top)) + 1)
    )
    colour = "#0a6b2d" if pce > threshold else "#777"
    xt = x(threshold)
    return (
        f'<svg width="{width}" height="66" role="img" '
        f'aria-label="PCE {pce:.1f} against the threshold {threshold:g} on a log scale">'
        f'<rect x="{left}" y="{y0 - 14}" width="{right - left}" height="14" fill="#eee"/>'
        f'<rect x="{left}" y="{y0 - 14}" width="{x(pce) - left:.1f}" height="14" fill="{colour}"/>'
        f'<line x1="{left}" y1="{y0}" x2="{right}" y2="{y0}" stroke="#444"/>{ticks}'
        f'<line x1="{xt:.1f}" y1="{y0 - 20}" x2="{xt:.1f}" y2="{y0 + 2}" stroke="#c00" stroke-width="2"/>'
        f'<text x="{xt:.1f}" y="{y0 - 23}" font-size="10" fill="#c00" text-anchor="middle">threshold {threshold:g}'
        f'</text><text x="{(left + right) / 2:.0f}" y="{y0 + 30}" font-size="10" text-anchor="middle" fill="#555">'
        f"PCE (log scale): this image {pce:.1f}</text></svg>"
    )


@dataclass
class FingerprintCheck:
    """The fingerprint database as it is now against what a case scored (:func:`check_fingerprints`).

    ``states`` holds each camera's metadata, or why it cannot be shown (damaged, not in the database);
    ``scored`` the fingerprint SHA-256s the case's rows name per camera.
    """

    database: str | None
    cameras: list[str]
    recorded_sha256: str | None = None
    sha256: str | None = None
    error: str | None = None
    states: dict[str, dict | str] = field(default_factory=dict)
    scored: dict[str, set] = field(default_factory=dict)

    def mismatched(self, camera: str) -> bool:
        """Whether the database's fingerprint of ``camera`` is readable but not one the case scored."""
        meta, used = self.states.get(camera), self.scored.get(camera)
        return isinstance(meta, dict) and bool(used) and meta.get("sha256") not in used

    def warnings(self) -> list[str]:
        """One line per difference (the database changed, a camera unreadable or not the one scored)."""
        if not self.database or not self.recorded_sha256:
            return []
        if self.error is not None:
            return [f"{self.database}: the fingerprint database cannot be read ({self.error}); the report's "
                    "fingerprint section says so"]  # fmt: skip
        out = []
        if self.sha256 != self.recorded_sha256:
            out.append(f"{self.database}: the fingerprint database changed since the case was scored (SHA-256 now "
                       f"{self.sha256}, recorded {self.recorded_sha256}); the report describes only the fingerprints "
                       "still the ones scored")  # fmt: skip
        for camera in sorted(self.scored):
            state = self.states.get(camera, "not in the database now")
            if isinstance(state, str):
                out.append(f"{camera}: its fingerprint cannot be used now ({state}); the report shows none of its "
                           "sources")  # fmt: skip
            elif self.mismatched(camera):
                out.append(f"{camera}: the database's fingerprint (SHA-256 {state.get('sha256')}) is not the one the "
                           "case scored; the report shows none of its sources")  # fmt: skip
        return out


def _case_cameras(manifest: dict, rows: list[dict]) -> list[str]:
    """The cameras a case scored: the parameters' list, else the rows' cameras."""
    return (manifest.get("parameters") or {}).get("cameras") or sorted({r["camera"] for r in rows})


def check_fingerprints(manifest: dict, rows: list[dict]) -> FingerprintCheck:
    """The database a case names, as it is now, against the SHA-256 the case recorded and each camera's
    fingerprint against the SHA-256 its rows name (every camera file read and hashed once)."""
    scored: dict[str, set] = defaultdict(set)
    for r in rows:
        if r.get("fingerprint_sha256"):
            scored[r["camera"]].add(r["fingerprint_sha256"])
    check = FingerprintCheck(manifest.get("database"), _case_cameras(manifest, rows),
                             manifest.get("database_sha256"), scored=dict(scored))  # fmt: skip
    try:
        store = FingerprintStore(check.database) if check.database else None
        held = set(store.cameras()) if store else set()
        check.sha256 = store.file_sha256() if store else None
    except (StoreError, OSError) as exc:
        check.error = str(exc)
        return check
    for cam in sorted(held & (set(check.cameras) | set(scored))):
        try:
            check.states[cam] = store.meta(cam)
        except StoreError as exc:  # a damaged camera: said so, the others still described
            check.states[cam] = str(exc)
    return check


def _fingerprint_section(check: FingerprintCheck) -> str:
    """Per camera: the fingerprint's source images (path, SHA-256, size, JPEG quality), their count and quality.

    Only for the fingerprints the case scored (:func:`check_fingerprints`): a database that changed since the
    case recorded it, and a camera whose fingerprint changed or cannot be read, are said so, and that camera's
    sources are not shown.
    """
    out = ["<h2>Fingerprints</h2>"]
    if check.error is not None:
        why = _e(check.error)
        return out[0] + f"<p class='note'>The fingerprint database could not be read for this section: {why}</p>"
    if check.recorded_sha256 and check.sha256 != check.recorded_sha256:
        out.append(
            f"<p class='note' style='color:#c00'><b>The fingerprint database changed since the case was scored</b> "
            f"(SHA-256 now <code>{_e(check.sha256)}</code>, recorded <code>{_e(check.recorded_sha256)}</code>): only "
            "the cameras whose fingerprint is still the one scored are described below.</p>"
        )
    for cam in check.cameras:
        meta = check.states.get(cam)
        if not isinstance(meta, dict):
            why = meta or "not in the database now"
            out.append(f"<h3>{_e(cam)}</h3><p class='note' style='color:#c00'>{_e(why)}: its source images cannot "
                       "be shown.</p>")  # fmt: skip
            continue
        if check.mismatched(cam):
            out.append(
                f"<h3>{_e(cam)}</h3><p class='note' style='color:#c00'>The database's fingerprint of this camera "
                f"(SHA-256 <code>{_e(meta.get('sha256'))}</code>) is not the one the case scored (<code>"
                f"{_e(', '.join(sorted(check.scored[cam])))}</code>): its source images are not shown.</p>"
            )
            continue
        q = meta.get("quality") or {}
        quality = (
            f"JPEG quality {q.get('quality_min')} to {q.get('quality_max')} (median {q.get('quality_median')})"
            if q.get("jpeg_images")
            else "no JPEG source"
        )
        crop = "centre crop " + "x".join(map(str, meta["crop"])) if meta.get("crop") else "full frame"
        out.append(
            f"<h3>{_e(cam)}</h3><p>{_e(meta.get('image_count'))} source image(s); fingerprint "
            f"{_e(meta.get('cols'))}x{_e(meta.get('rows'))} ({_e(crop)}); {_e(quality)}; EXIF make/model "
            f"{_e(meta.get('make'))} / {_e(meta.get('model'))}; SHA-256 <code>{_e(meta.get('sha256'))}</code>.</p>"
            "<table><tr><th>Source image</th><th>SHA-256</th><th>Size</th><th>JPEG quality</th></tr>"
        )
        for src in meta.get("sources", []):
            out.append(
                f"<tr><td><code>{_e(normalized_path(src.get('path')))}</code></td><td><code>{_e(src.get('sha256'))}"
                f"</code></td><td>{_e(src.get('cols'))}x{_e(src.get('rows'))}</td><td>{_e(src.get('jpeg_quality'))}"
                "</td></tr>"
            )
        out.append("</table>")
    return "".join(out)


def _calibration_table(doc: dict, store: FingerprintStore, threshold: float) -> str:
    """One row per camera and band of a stored calibration, heavier-than-theory tails marked."""
    out = [
        "<table><tr><th>Camera</th><th>Band (JPEG quality)</th><th>Null PCEs (n)</th><th>Median PCE</th>"
        "<th>99th percentile</th><th>Max</th><th>Above threshold</th><th>Empirical tail at threshold (theory)</th>"
        "<th>Compared with the theory</th></tr>"
    ]
    for r in summary_rows(doc, threshold):
        try:
            current = store.header(r["camera"])[0]
        except StoreError:
            current = None
        if current != r["fingerprint_sha256"]:
            status = "<b>not used</b>: the fingerprint changed (or was removed) since it was calibrated"
        elif r["above_threshold"]:
            status = (f"<b style='color:#c00'>heavier than the theory</b>: {r['above_threshold']} null PCE(s) above "
                      f"{threshold:g}: an image of another camera would be called consistent")  # fmt: skip
        elif r["heavier_than_theory"]:
            status = (f"<b style='color:#c00'>heavier than the theory</b>: at PCE {r['check_level']:.1f} the "
                      f"empirical tail {r['tail_at_check']:.2g} is {r['tail_ratio']:.0f}x the theoretical "
                      f"{format_probability(r['p_fa_at_check'])}")  # fmt: skip
        elif r["tail_ratio"] is None:
            status = "too few samples to compare"
        else:
            status = f"within the theory (ratio {r['tail_ratio']:.2g} at PCE {r['check_level']:.1f})"
        out.append(
            f"<tr><td>{_e(r['camera'])}</td><td>{_e(r['band'])}</td><td>{r['count']}</td><td>{r['median']:.2f}</td>"
            f"<td>{r['p99']:.2f}</td><td>{r['max']:.2f}</td><td>{r['above_threshold']}</td>"
            f"<td>{format_probability(r['tail_at_threshold'])} ({format_probability(r['p_fa_at_threshold'])})</td>"
            f"<td>{status}</td></tr>"
        )
    return "".join(out) + "</table>"


def _calibration_section(database: str | None, threshold: float, consistent: list[dict]) -> str:
    """Calibrated false alarms: the stored null PCEs per camera and quality band, and each match's empirical tail."""
    out = ["<h2>Calibration (empirical false alarms)</h2>"]
    try:
        store = FingerprintStore(database) if database else None
        loaded = store.calibration() if store else None
    except (StoreError, OSError) as exc:
        return out[0] + f"<p class='note' style='color:#c00'>The calibration was not used: {_e(exc)}</p>"
    if loaded is None:
        return out[0] + (
            "<p class='note'>No calibration is stored with the fingerprint database: the false-alarm probabilities "
            "in this report are the theoretical ones (Gaussian model) only (<code>spn calibrate</code> measures "
            "empirical ones).</p>"
        )
    doc, sha = loaded
    p, bg = doc["parameters"], doc["background"]
    crop = "centre crop " + "x".join(map(str, p["scoring"]["crop"])) if p["scoring"]["crop"] else "full frame"
    again = f", each also re-compressed in memory at JPEG quality {', '.join(map(str, p['qualities']))}"
    out.append(
        f"<p>The PCE of {bg['count']} background image(s){again if p['qualities'] else ''} against each camera they "
        f"do not come from ({_e(crop)}; {'leave-one-camera-out' if p['leave_one_camera_out'] else 'unlabelled'}; "
        f"measured {_e(doc['created_utc'])} by spn {_e(doc['tool']['version'])}; background SHA-256 list digest "
        f"<code>{_e(bg['sha256_list_digest'])}</code>; file SHA-256 <code>{_e(sha)}</code>). Assumption: "
        f"{_e(doc['assumption'])}. The empirical tail of a PCE is (1 + number of null PCEs at or above it) / "
        "(1 + n): it cannot go below 1/(1 + n).</p>"
    )
    out.append(_calibration_table(doc, store, threshold))
    out.append(
        "<p class='note'>Where a band is heavier than the theory, unrelated images of that quality reach higher "
        "PCEs than the Gaussian model predicts: the theoretical false-alarm probability understates the risk there, "
        "and the empirical tail (bounded below by 1/(1 + n)) is the figure to weigh.</p>"
    )
    if consistent:
        out.append(
            "<table><tr><th>Image</th><th>Camera</th><th>PCE</th><th>p (false alarm, theory)</th>"
            "<th>Empirical tail (null images, band)</th></tr>"
        )
        for r in consistent:
            tail = (
                f"{format_probability(r['p_fa_empirical'])} ({r['null_count']}, {r['null_band']})"
                if r.get("p_fa_empirical") is not None
                else f"n/a: {r.get('calibration_note') or 'not recorded when it was scored'}"
            )
            out.append(
                f"<tr><td><code>{_e(normalized_path(r['image']))}</code></td><td>{_e(r['camera'])}</td>"
                f"<td>{r['pce']:.1f}</td><td>{format_probability(r['p_fa'])}</td><td>{_e(tail)}</td></tr>"
            )
        out.append("</table>")
    return "".join(out)


def _not_verified(problems: list[str]) -> str:
    items = "".join(f"<li>{_e(p)}</li>" for p in problems)
    return (
        "<div class='unverified'><h2>NOT VERIFIED</h2><p>This case did not verify when the report was written "
        "(<code>spn case verify</code>): what follows may not be what the analysis produced.</p>"
        f"<ul>{items}</ul></div>"
    )


def build_report(folder: str | Path, *, problems: list[str] | None = None, head: str | None = None,
                 fingerprints: FingerprintCheck | None = None) -> str:  # fmt: skip
    """The HTML report of a case folder (results, errors, manifest, audit, artifacts).

    ``problems``: what ``verify`` found; when there are any the report is marked NOT VERIFIED at the top
    and in its title. ``head``: the audit chain head the report was written against. ``fingerprints``: the
    database's check made already (:func:`check_fingerprints`), else made here.
    """
    case = Case(folder)
    manifest = case.read_manifest() or {}
    rows = case.rows()
    errors = case.error_rows()
    params = manifest.get("parameters", {})
    threshold = float(params.get("threshold", 60.0))
    cameras = _case_cameras(manifest, rows)
    images = sorted({r["image"] for r in rows})
    consistent = [r for r in rows if r["decision"] == "consistent"]
    by_camera = defaultdict(list)
    for r in consistent:
        by_camera[r["camera"]].append(r)
    runs = manifest.get("runs", [])
    p60 = false_alarm_probability(threshold)
    out = io.StringIO()
    w = out.write
    mark = "NOT VERIFIED - " if problems else ""
    w(
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{mark}spn report "
        f"{_e(manifest.get('case_id'))}</title><style>{_CSS}</style></head><body>"
    )
    if problems:
        w(_not_verified(problems))
    w("<h1>Camera identification report (sensor pattern noise)</h1>")
    if not (rows or errors or manifest):  # only a clustering or pooled probes (spn cluster / match --pool --case)
        w(_analyses_only(case, head) + cluster_section(case) + pool_section(case))
        w(f"<p class='note'>Integrity: re-check with <code>spn case verify {_e(folder)} --head {_e(head)}</code>.</p>")
        w(_SCRIPT + "</body></html>")
        return out.getvalue()
    w("<table class='meta'>")
    for k, v in [
        ("Case", manifest.get("case_id")),
        ("Examiner", manifest.get("examiner")),
        ("Report generated (UTC)", utc_now()),
        ("Audit chain head", head),
        (
            "Analysis runs (UTC)",
            "; ".join(f"{r.get('started_utc')} to {r.get('finished_utc')} ({r.get('status')})" for r in runs),
        ),
        ("Tool", f"spn {manifest.get('version')} (numpy {manifest.get('numpy')}, OpenCV {manifest.get('opencv')})"),
        (
            "Fingerprint database",
            f"{normalized_path(manifest.get('database'))} — SHA-256 {manifest.get('database_sha256')}",
        ),
        ("Evidence", ", ".join(normalized_path(e) for e in manifest.get("evidence", []))),
        ("Decision threshold", f"PCE > {threshold:g}"),
        (
            "Analysis region",
            "centre crop " + "x".join(map(str, params["crop"])) if params.get("crop") else "full frame",
        ),
        (
            "Residual",
            "classic and restored, each image scored with both (restoration network weights SHA-256 "
            + str(params.get("weights_sha256")) + "; see Method)"
            if params.get("restored")
            else "classic (Lukáš-Fridrich-Goljan wavelet residual)",
        ),
    ]:
        w(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>")
    w("</table>")
    w("<h2>Summary</h2>")
    w(
        f"<p>{len(images)} image(s) scored against {len(cameras)} camera fingerprint(s); {len(errors)} file(s) could "
        f"not be analysed; {len(consistent)} image-camera pair(s) with PCE above {threshold:g}.</p>"
    )
    w("<table><tr><th>Camera</th><th>Images consistent with it</th></tr>")
    for cam in cameras:
        w(f"<tr><td>{_e(cam)}</td><td>{len(by_camera.get(cam, []))}</td></tr>")
    w("</table>")
    w(_fingerprint_section(fingerprints or check_fingerprints(manifest, rows)))
    w(_calibration_section(manifest.get("database"), threshold, consistent))
    for cam in cameras:
        matches = sorted(by_camera.get(cam, []), key=lambda r: -r["pce"])
        w(f"<h2>Images consistent with camera {_e(cam)}</h2>")
        if not matches:
            w("<p class='note'>None above the threshold. This does not exclude the camera (see Limitations).</p>")
            continue
        w(
            "<table><tr><th>Image</th><th>SHA-256</th><th>JPEG quality</th><th>PCE</th><th>p (false alarm)</th>"
            "<th>Rotation</th></tr>"
        )
        for r in matches:
            w(
                f"<tr><td><code>{_e(normalized_path(r['image']))}</code></td><td><code>{_e(r['sha256'])}</code></td>"
                f"<td>{_e(r.get('jpeg_quality') or 'n/a')}</td><td class='ok'>{r['pce']:.1f}</td>"
                f"<td>{format_probability(r['p_fa'])}</td><td>{_e(r['rotation'])}</td></tr>"
            )
        w("</table>")
        for r in matches:
            folder_a = case.artifact_dir(r["sha256"])
            pics = []
            thumbnail = case.read_artifact(folder_a / "thumbnail.jpg")
            if thumbnail is not None:
                pics.append(("The questioned image (thumbnail, as stored: EXIF orientation not applied)", thumbnail))
            surface = case.read_artifact(folder_a / f"surface-{cam}.npy")
            if surface is not None:
                pics.append(
                    (
                        "Correlation surface around the peak (41x41 shifts; colour: correlation in units of its "
                        "noise std)",
                        surface_png(np.load(io.BytesIO(surface), allow_pickle=False)),
                    )
                )
            preview = case.read_artifact(folder_a / "residual.png")
            if preview is not None:
                pics.append(
                    (
                        "Noise residual, centre 256x256 at 1:1 (contrast stretched between its 1st and 99th "
                        "percentiles)",
                        preview,
                    )
                )
            w("<div class='match'><div>")
            w(
                f"<p><b>{_e(Path(r['image']).name)}</b> is <span class='ok'>consistent with {_e(cam)}</span>: "
                f"PCE {r['pce']:.1f} (threshold {threshold:g}), NCC {r['ncc']:.4f}, JPEG quality "
                f"{_e(r.get('jpeg_quality') or 'n/a (no JPEG tables)')}, "
                f"peak at shift ({r.get('shift_row', 0)}, {r.get('shift_col', 0)}), "
                f"{_e(r['n_shifts'])} alignment(s) tried, false-alarm probability {format_probability(r['p_fa'])}.</p>"
                f"<p class='note'><code>{_e(normalized_path(r['image']))}</code></p>"
            )
            for line in r.get("warnings") or ():  # leak safeguards (spncli.leaks): shared or periodic components
                w(f"<p class='leak' style='color:#9a3412;font-weight:600'>Warning — {_e(line)}</p>")
            for line in r.get("decoder_warnings") or ():  # damaged data the decoder filled in (spncli.evidence)
                w(f"<p class='leak' style='color:#9a3412;font-weight:600'>Damaged file — the decoder reported: "
                  f"{_e(line)} (part of the image may be missing; it was scored as decoded)</p>")
            w(pce_scale_svg(r["pce"], threshold))
            w("</div>")
            for caption, png in pics:
                w(
                    f"<figure><img alt='{_e(caption)}' src='{_data_uri(png)}' style='max-width:320px'>"
                    f"<figcaption class='note'>{_e(caption)}</figcaption></figure>"
                )
            w("</div>")
    if errors:
        w("<h2>Files that could not be analysed</h2><table><tr><th>File</th><th>Reason</th></tr>")
        for e in errors:
            w(f"<tr><td><code>{_e(normalized_path(e['file']))}</code></td><td>{_e(e['reason'])}</td></tr>")
        w("</table>")
    w(
        "<h2>All scores</h2><p class='note'>Every input: scored against every camera, or failed or not reached "
        "with the reason.</p><table><tr><th>Image</th><th>Camera</th><th>PCE</th><th>p (false alarm)</th>"
        "<th>Decision</th></tr>"
    )
    table = [
        (normalized_path(r["image"]), r["camera"], f"{r['pce']:.1f}", format_probability(r.get("p_fa")),
         ("consistent with " if r["decision"] == "consistent" else "not consistent with ") + str(r["camera"]))
        for r in rows
    ]  # fmt: skip
    scored = {r["image"] for r in rows}
    unscored = {e["file"]: f"failed: {e['reason']}" for e in errors}
    for item in manifest.get("inputs", []):
        if item.get("status") != "scored" and item["path"] not in scored:
            unscored.setdefault(item["path"], f"{item.get('status')}: {item.get('reason') or 'not scored'}")
    table += [(normalized_path(f), "—", "—", "—", why) for f, why in unscored.items() if f not in scored]
    for image, cam, pce, p, decision in sorted(table):
        w(f"<tr><td><code>{_e(image)}</code></td><td>{_e(cam)}</td><td>{pce}</td><td>{p}</td>")
        w(f"<td>{_e(decision)}</td></tr>")
    w("</table>")
    w(cluster_section(case) + pool_section(case))
    qualities = sorted({r.get("jpeg_quality") for r in rows if r.get("jpeg_quality")})
    w("<h2>Method and limitations</h2><ul>")
    w(
        "<li>Method: the noise residual of each image (wavelet denoiser, Lukáš, Fridrich &amp; Goljan 2006) is "
        "correlated with each camera's maximum-likelihood PRNU fingerprint (Chen et al. 2008); the peak-to-correlation "
        "energy (PCE, Goljan, Fridrich &amp; Filler 2009) is read at zero shift, energy outside an 11x11 "
        "neighbourhood.</li>"
    )
    w(
        f"<li>A PCE above {threshold:g} means the image is <i>consistent with</i> the camera. "
        f"For an image from another camera the probability of exceeding {threshold:g} at one alignment "
        f"is about {format_probability(p60)} (Gaussian model of the correlation); the reported false-alarm probability "
        "accounts for the number of alignments tried.</li>"
    )
    w(
        "<li>A PCE at or below the threshold <b>does not exclude</b> a camera: small crops, dark, saturated or "
        "smooth scenes, strong JPEG compression, resizing, cropping, stabilisation or heavy processing all reduce "
        "the PCE of a true match.</li>"
    )
    w(
        "<li>Processing history: the JPEG quality of each image is estimated from its quantization tables; images "
        f"here range over qualities {', '.join(map(str, qualities)) or 'n/a'}. Re-compressed images (e.g. by "
        "messaging apps) carry weaker sensor noise.</li>"
    )
    w(
        "<li>The result concerns the sensor, not the owner or the time of capture; the fingerprint database's "
        "provenance (source images and their hashes) is recorded in the database itself.</li>"
    )
    if params.get("restored"):
        w(_restoration_method(params.get("weights_sha256"), rows, threshold))
    w("</ul>")
    w(
        f"<p class='note'>Integrity: re-check with <code>spn case verify {_e(folder)} --head {_e(head)}</code> "
        "(the audit chain, every case file against its recorded SHA-256, and every input re-hashed).</p>"
    )
    w(_SCRIPT + "</body></html>")
    return out.getvalue()


def _restoration_method(weights_sha256, rows: list[dict], threshold: float) -> str:
    """Method item of a case scored with ``--restore``: the network, its training data and validation (from its
    model card), the two-residual rule, and every image whose two residuals disagree."""
    card = find_card(weights_sha256)
    if card is None:
        about = (f"<li>Restoration: weights SHA-256 <code>{_e(weights_sha256)}</code>; no model card of these "
                 "weights ships with this tool, so the network, its training data and its validation are not "
                 "described here.</li>")  # fmt: skip
    else:
        d = describe(card)
        recorded = sorted({r["restoration_policy"] for r in rows if r.get("restoration_policy")})
        applied = ("; ".join(recorded) + " (as recorded with the scores)" if recorded else
                   "not recorded with these scores (scored by an earlier spn); the card shipped now says: "
                   + d["policy"])
        about = (f"<li>Restoration: network <b>{_e(d['name'])}</b> (weights SHA-256 "
                 f"<code>{_e(weights_sha256)}</code>): {_e(d['network'])}. Training data: {_e(d['training'])} "
                 f"Weights chosen: {_e(d['selection'].rstrip('.'))}. Applied: {_e(applied)}. "
                 "Its model card (models/) gives its accuracy on camera units that chose nothing.</li>")  # fmt: skip
    about += (
        "<li>Two residuals: each image was scored with the classic and the restored residual; it is reported "
        f"<i>consistent with</i> a camera when either PCE exceeds {threshold:g} (false-alarm probability at most "
        "twice that of one test, Bonferroni), so no match of the classic residual is lost.</li>"
    )
    disagree = sorted(
        (normalized_path(r["image"]), r["camera"], r.get("pce_classic"), r.get("pce_restored"))
        for r in rows
        if r.get("residuals_disagree")
    )
    if not disagree:
        return about + "<li>The two residuals agreed on every image-camera pair.</li>"
    items = "".join(
        f"<tr><td><code>{_e(img)}</code></td><td>{_e(cam)}</td><td>{_e(a)}</td><td>{_e(b)}</td></tr>"
        for img, cam, a, b in disagree
    )
    return about + (
        f"<li>The two residuals disagree (one above {threshold:g}, the other not) for {len(disagree)} image-camera "
        "pair(s); examine these with care:<table><tr><th>Image</th><th>Camera</th><th>PCE classic</th>"
        f"<th>PCE restored</th></tr>{items}</table></li>"
    )


# -- analyses written into the case by spn cluster --case and spn match --pool --case -------------------------------
MAX_PAIR_ROWS = 15
"""Clusters up to this many members list every pair's score; larger ones give the range (all pairs in the JSON)."""


def _pce_of(z: float) -> float:
    return math.copysign(z * z, z)


def _cluster_table(record: dict, cluster: dict) -> str:
    images = record["images"]
    out = [
        "<table><tr><th>Member</th><th>SHA-256</th><th>Rotation</th><th>JPEG quality</th>"
        "<th>z against the others' consensus</th></tr>"
    ]
    for i, mz in zip(cluster["members"], cluster.get("member_z", []), strict=False):
        im = images[i]
        out.append(
            f"<tr><td><code>{_e(normalized_path(im['path']))}</code></td><td><code>{_e(im['sha256'])}</code></td>"
            f"<td>{_e(im.get('rotation'))}</td><td>{_e(im.get('jpeg_quality') or 'n/a')}</td>"
            f"<td>{'' if mz is None else f'{mz:.2f}'}</td></tr>"
        )
    out.append("</table>")
    pairs = cluster.get("pairwise_z", [])
    if cluster["size"] <= MAX_PAIR_ROWS:
        out.append("<table><tr><th>Image</th><th>Image</th><th>z</th><th>PCE</th></tr>")
        for a, b, z in sorted(pairs, key=lambda p: -p[2]):
            out.append(
                f"<tr><td><code>{_e(normalized_path(images[a]['path']))}</code></td>"
                f"<td><code>{_e(normalized_path(images[b]['path']))}</code></td><td>{z:.2f}</td>"
                f"<td>{_pce_of(z):.1f}</td></tr>"
            )
        out.append("</table>")
    elif pairs:
        zs = sorted(p[2] for p in pairs)
        out.append(
            f"<p class='note'>{len(pairs)} pairs: z from {zs[0]:.2f} to {zs[-1]:.2f} (median "
            f"{zs[len(zs) // 2]:.2f}); every pair's score is in <code>cluster/clusters.json</code>.</p>"
        )
    return "".join(out)


def _unplaced(record: dict, alone: list[dict]) -> str:
    """The images left alone, each with its highest score against any other image."""
    z = np.asarray(record.get("similarity_z") or [[0.0]], float)
    out = [
        "<h3>Images not placed</h3><table><tr><th>Image</th><th>SHA-256</th><th>Highest z with any other image</th>"
        "</tr>"
    ]
    for c in alone:
        i = c["members"][0]
        best = float(np.max(np.delete(z[i], i))) if z.shape[0] > 1 else float("nan")
        out.append(
            f"<tr><td><code>{_e(normalized_path(record['images'][i]['path']))}</code></td><td><code>"
            f"{_e(record['images'][i]['sha256'])}</code></td><td>{best:.2f}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def cluster_section(case: Case) -> str:
    """The clustering written by ``spn cluster --case``: the matrix picture, clusters, scores, threshold; or ''."""
    data = case.read_analysis("cluster/clusters.json")
    if data is None:
        return ""
    record = json.loads(data)
    settings = record.get("settings", {})
    alpha, n_tests, tau = settings.get("alpha"), record["n_tests"], record["z_threshold"]
    groups = [c for c in record["clusters"] if c["size"] > 1]
    alone = [c for c in record["clusters"] if c["size"] == 1]
    out = [
        "<h2>Blind grouping by source camera (clustering)</h2>",
        f"<p>{record['n_images']} image(s), analysed at {record['analysis_cols']}x{record['analysis_rows']} "
        f"(centre crop, portrait images turned to landscape for the analysis only), form {len(groups)} group(s) of "
        f"two or more images; {len(alone)} image(s) could not be placed and stay alone. "
        f"{len(record.get('failed', []))} file(s) could not be used.</p>",
        f"<p>Merge threshold: z &gt; {tau:.3f} (PCE &gt; {record['pce_threshold']:.1f} at zero shift), from the "
        f"false-alarm probability {_e(alpha)} of the whole grouping over {n_tests} possible tests "
        f"(Bonferroni: {format_probability(alpha / n_tests) if alpha else 'n/a'} per test); null scale of the "
        f"scores {record['null_scale']:.3f} (measured on the data, never below 1). Images in one group are "
        "<i>consistent with</i> one source camera, and every member is supported by the others' consensus above "
        "the threshold. An image left alone is <b>not excluded</b> from any group: small, dark, textured or "
        "compressed images give weak scores.</p>",
    ]
    picture = case.read_analysis("cluster/similarity.png")
    if picture is not None:
        caption = (
            "Similarity matrix: the score z of every pair of images, ordered by cluster (largest first); framed "
            f"squares are the clusters; the colour bar marks the merge threshold z {tau:.2f}"
        )
        out.append(
            f"<figure><img alt='{_e(caption)}' src='{_data_uri(picture)}' style='max-width:760px'>"
            f"<figcaption class='note'>{_e(caption)}</figcaption></figure>"
        )
    for c in sorted(groups, key=lambda c: (-c["size"], c["id"])):
        stored = (
            f"; fingerprint stored as <code>{_e(c['fingerprint_camera'])}</code> (SHA-256 "
            f"<code>{_e(c.get('fingerprint_sha256'))}</code>)"
            if c.get("fingerprint_camera")
            else ""
        )
        low = c.get("min_pair_z")
        out.append(
            f"<h3>Cluster {c['id']}: {c['size']} images consistent with one source camera</h3>"
            f"<p class='note'>Weakest pair z {low:.2f}{stored}.</p>" + _cluster_table(record, c)
        )
    if alone:
        out.append(_unplaced(record, alone))
    if record.get("failed"):
        out.append("<h3>Files not used in the clustering</h3><table><tr><th>File</th><th>Reason</th></tr>")
        for f in record["failed"]:
            out.append(f"<tr><td><code>{_e(normalized_path(f['path']))}</code></td><td>{_e(f['reason'])}</td></tr>")
        out.append("</table>")
    out.append(
        f"<p class='note'>Clustered {_e(record.get('started_utc'))} to {_e(record.get('finished_utc'))} UTC by spn "
        f"{_e(record.get('tool_version'))}; {record.get('notched_frequencies')} common spectral peaks notched. "
        "Method: normalised residuals correlated pairwise (Goljan, Fridrich &amp; Filler 2009); agglomeration on "
        "the clusters' consensus (Bloy 2008; Lin &amp; Li 2017).</p>"
    )
    return "".join(out)


def _pooled_as(rows: list[dict]) -> str:
    """What a pooled record's images were pooled into, as its ``estimator`` says (earlier versions pooled the ML
    estimate; a report regenerated from their case files must say so)."""
    estimator = rows[0].get("estimator", "") if rows else ""
    if estimator.startswith("pooled ML estimate"):
        return "one maximum-likelihood estimate of their common sensor pattern"
    return ("one matched-filter statistic (each residual multiplied by its image's intensity and summed, the "
            "single-image detector's correlation summed over the images)")


def pooled_database_changes(rows: list[dict]) -> list[str]:
    """One pooled record's database as it is now: a line if it changed since the probe was scored, cannot be read,
    or no longer holds a scored camera's fingerprint (each camera named); nothing if it is the one scored."""
    db, recorded = (rows[0].get("db"), rows[0].get("db_sha256")) if rows else (None, None)
    if not db or not recorded:
        return []
    if not os.path.isabs(db):  # earlier versions recorded the path as given: relative to a folder not recorded
        return [f"the fingerprint database was recorded as {db}, relative to the folder the probe was scored "
                "from (an earlier version); it is not checked against the database now"]  # fmt: skip
    try:
        store = FingerprintStore(db)
        now = store.file_sha256()
    except (StoreError, OSError) as exc:
        return [f"the fingerprint database {db} cannot be read now ({exc}): the scores below cannot be checked "
                "against it"]  # fmt: skip
    if now == recorded:
        return []
    out = [f"the fingerprint database {db} changed since this probe was scored (SHA-256 now {now}, recorded "
           f"{recorded})"]  # fmt: skip
    for r in rows:
        try:
            held = store.meta(r["camera"]).get("sha256")
        except StoreError as exc:
            held = f"unreadable ({exc})"
        if held != r.get("fingerprint_sha256"):
            out.append(f"{r['camera']}: the database's fingerprint now is not the one scored "
                       f"({held or 'none'}; scored {r.get('fingerprint_sha256')})")  # fmt: skip
    return out


def pool_database_warnings(case: Case) -> list[str]:
    """:func:`pooled_database_changes` of every pooled probe of a case, each line naming its file."""
    out = []
    for rel in case.analysis_files("pool/"):
        if rel.endswith(".json"):
            record = json.loads(case.read_analysis(rel) or b"{}")
            out += [f"{rel}: {line}" for line in pooled_database_changes(record.get("pooled", []))]
    return out


def pool_section(case: Case) -> str:
    """Each pooled probe written by ``spn match --pool --case``: the images pooled and every camera's score."""
    out = []
    for rel in case.analysis_files("pool/"):
        if not rel.endswith(".json"):
            continue
        record = json.loads(case.read_analysis(rel) or b"{}")
        rows = sorted(record.get("pooled", []), key=lambda r: -r["pce"])
        images = record.get("images", [])
        threshold = float(rows[0]["threshold"]) if rows else 60.0
        out.append(
            f"<h2>Pooled probe {_e(Path(rel).stem)}: {len(images)} image(s) scored as one probe</h2>"
            f"<p>The images below, of one suspected source, are pooled into {_pooled_as(rows)}, "
            "each weighted by the inverse variance of its residual unless stated, "
            "and scored against each camera as <b>one</b> test, with that test's false-alarm probability.</p>"
            "<table><tr><th>Pooled image</th><th>SHA-256</th><th>Size</th><th>JPEG quality</th>"
            "<th>Share of the weight</th></tr>"
        )
        for im in images:
            share = im.get("weight_share")  # absent from records of earlier versions
            out.append(
                f"<tr><td><code>{_e(normalized_path(im['path']))}</code></td><td><code>{_e(im['sha256'])}</code>"
                f"</td><td>{_e(im.get('cols'))}x{_e(im.get('rows'))}</td><td>{_e(im.get('jpeg_quality') or 'n/a')}"
                f"</td><td>{'n/a' if share is None else f'{share:.0%}'}</td></tr>"
            )
        out.append(
            "</table><table><tr><th>Camera</th><th>Pooled PCE</th><th>p (false alarm)</th><th>Best single PCE</th>"
            "<th>Decision</th></tr>"
        )
        for r in rows:
            verdict = ("consistent with " if r["decision"] == "consistent" else "not consistent with ") + r["camera"]
            best = r.get("best_single_pce")
            out.append(
                f"<tr><td>{_e(r['camera'])}</td><td{' class=ok' if r['decision'] == 'consistent' else ''}>"
                f"{r['pce']:.1f}</td><td>{format_probability(r['p_fa'])}</td>"
                f"<td>{'' if best is None else f'{best:.1f}'}</td><td>{_e(verdict)}</td></tr>"
            )
        out.append("</table>")
        for line in (rows[0].get("notes") or ()) if rows else ():  # one image alone, or one carrying the pool
            out.append(f"<p class='leak' style='color:#9a3412;font-weight:600'>Note — {_e(line)}</p>")
        for line in pooled_database_changes(rows):
            out.append(f"<p class='note' style='color:#c00'><b>Database</b> — {_e(line)}</p>")
        for r in rows:
            for line in r.get("warnings") or ():  # leak safeguards (spncli.leaks), as for single images
                out.append(f"<p class='leak' style='color:#9a3412;font-weight:600'>Warning — {_e(line)}</p>")
        if rows:
            out.append(pce_scale_svg(rows[0]["pce"], threshold).replace("this image", "the pooled probe"))
            out.append(
                f"<p class='note'>Weighting {_e(rows[0].get('weighting'))}; database SHA-256 "
                f"<code>{_e(rows[0].get('db_sha256'))}</code>. A pooled PCE at or below {threshold:g} does not "
                "exclude a camera.</p>"
            )
        for f in record.get("failed", []):
            out.append(f"<p class='note'>Not pooled: <code>{_e(normalized_path(f['path']))}</code>: "
                       f"{_e(f['reason'])}</p>")  # fmt: skip
    return "".join(out)


def _analyses_only(case: Case, head: str | None) -> str:
    """The head of a report for a case that holds no match results, only a clustering or pooled probes."""
    entries, _ = case.audit_entries()
    starts = [e for e in entries if str(e.get("event", "")).endswith("-start")]
    first = starts[0] if starts else {}
    rows = [
        ("Case", first.get("case_id")),
        ("Examiner", first.get("examiner")),
        ("Report generated (UTC)", utc_now()),
        ("Audit chain head", head),
        ("Analysis runs (UTC)", "; ".join(f"{e.get('event')} {e.get('utc')}" for e in starts)),
        ("Tool", f"spn {first.get('version')} (numpy {first.get('numpy')}, OpenCV {first.get('opencv')})"),
        ("Evidence", ", ".join(sorted({normalized_path(p) for e in starts for p in e.get("evidence", [])}))),
    ]
    return (
        "<table class='meta'>" + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"
        "<p class='note'>This case holds no image-against-camera match results: only the analyses below.</p>"
    )
