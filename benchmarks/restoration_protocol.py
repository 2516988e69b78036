"""Honest protocol for the compression-aware residual on the Dresden Nikon units (issue 7).

Fingerprints: the first 8 flat-fields of each of the 6 units (classic ML estimator, full frame);
the last 2 flat-fields of each unit are held out as flat-field probes. Probes: the Dresden naturals
and the held-out flat-fields, re-compressed in memory as `spn degrade` does (libjpeg through
OpenCV, 4:2:0) at Q 90/70/50/30, then scored against all 6 fingerprints at the centre 1024x1024
(crop before extraction for the classic residual; full-frame DCT filter, then crop, for the
compression-aware one) and at full frame.

Selection split: units ``_0`` -- the weighting and the per-image Wiener criterion are chosen there
(leave-one-unit-out agreement is printed). Report split: units ``_1`` -- chooses nothing.

    PYTHONPATH=. python benchmarks/restoration_protocol.py --out /tmp/protocol --cache /tmp/protocol-cache

Per-probe scores are cached (JSON Lines) so that a re-run only recomputes the tables
(``--cached-only``: tables from what is cached, nothing computed); a cached probe that lacks a variant
(a filter added to FILTERS) gets only that variant computed. About 30 minutes on 2 shared cores for
the 112 probes (28 images x 4 qualities) from scratch, fingerprints about 2 minutes.

The centre-1024 columns of classic, classic without Wiener and the shipped compression-aware default
are what ``spn eval PROBES --db DB --crop 1024 --aware`` prints for probes written by ``spn degrade``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from spncli import jpegdomain as jd
from spncli.degrade import DegradeSettings, encode
from spncli.evidence import decode, load_image
from spncli.fingerprint import FingerprintAccumulator
from spncli.geometry import centre_crop, crop_offsets
from spncli.pce import FingerprintSpectrum, ResidualSpectrum, score
from spncli.provenance import tool_info, utc_now
from spncli.residual import ResidualParams, grey_residual, postprocess, zero_mean_cfa

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dresden-nikon"
QUALITIES = (90, 70, 50, 30)
SCOPES = ("centre", "full")
THRESHOLD = 60.0
PARAMS = ResidualParams()
DEFAULT = jd.AwareSettings()
FILTERS = {"binary": ("binary", 0.0), "inverse-q": ("inverse-q", 0.0), "binary+z0.25": ("binary", 0.25)}
"""The DCT-domain filters compared: name -> (weighting, weight of the coefficients the file zeroed).
Weight 0 is the pure mask of the issue's measurement; 0.25 keeps a little of what the denoiser leaks there."""


def filter_name(weighting: str, zeroed: float) -> str:
    return next(k for k, v in FILTERS.items() if v == (weighting, zeroed))


def unit_of(path: Path) -> str:
    return path.stem.rsplit("_", 1)[0]


def fast_pces(residual: np.ndarray, spectra: dict[str, FingerprintSpectrum]) -> dict[str, float]:
    """PCE at zero shift against every fingerprint (`pce.score`, max_shift=0): one residual transform per shape."""
    probe = ResidualSpectrum(residual)
    return {cam: score(probe, spec).pce for cam, spec in spectra.items()}


def fingerprints(flats: dict[str, list[Path]], cache: Path) -> dict[str, np.ndarray]:
    out = {}
    for unit, paths in flats.items():
        key = hashlib.sha256("\n".join(p.name for p in paths).encode()).hexdigest()[:12]
        f = cache / f"fp-{unit}-{key}.npy"
        if f.exists():
            out[unit] = np.load(f)
            continue
        acc = FingerprintAccumulator(PARAMS)
        for p in paths:
            ev = load_image(p)
            acc.add(ev.pixels, ev.saturation)
        out[unit] = acc.finalize()
        np.save(f, out[unit])
        print(f"fingerprint {unit} from {len(paths)} flat-fields", file=sys.stderr, flush=True)
    return out


def probe_record(pixels, name, q, crop, spectra, check=False, have: dict | None = None) -> dict:
    """All residual variants of one re-compressed probe, scored in both scopes.

    ``have``: a cached record of the same probe; only the variants it lacks are computed (the probe is
    re-encoded bit-exactly, which its SHA-256 confirms).
    """
    data = encode(pixels, DegradeSettings(q, "jpeg", "420"))
    sha = hashlib.sha256(data).hexdigest()
    if have is not None and have["sha256"] != sha:
        raise RuntimeError(f"{name} q{q}: re-encoded probe differs from the cached one; use a fresh --cache")
    ev = decode(data, f"{name}.q{q}.420.jpg")
    lc = jd.read_luma_coefficients(data)
    g_full = grey_residual(ev.pixels, PARAMS)
    rec = have or {"image": name, "quality": q, "sha256": sha, "pce": {}, "criteria": {}}
    residuals = {s: {} for s in SCOPES}
    if "classic" not in rec["pce"].get("centre", {}):
        g_centre = grey_residual(np.ascontiguousarray(centre_crop(ev.pixels, crop)), PARAMS)
        for scope, g in (("centre", g_centre), ("full", g_full)):
            residuals[scope]["classic"] = postprocess(g, PARAMS)
            residuals[scope]["classic-nowiener"] = zero_mean_cfa(g)
            nowiener = residuals[scope]["classic-nowiener"]
            rec["criteria"].setdefault(scope, {})["classic"] = jd.wiener_criterion(nowiener, PARAMS)[0]
    (rows, cols), r0, c0 = g_full.shape, *crop_offsets(g_full.shape, crop)
    for name_, (weighting, zeroed) in FILTERS.items():
        if f"ca-{name_}-wiener" in rec["pce"].get("centre", {}):
            continue
        f = jd.filter_residual(g_full, lc, weighting, zeroed)  # once per filter; the crop comes after (as the library does)
        for scope, x, region in (
            ("centre", centre_crop(f, crop), (r0, c0, r0 + crop[0], c0 + crop[1])),
            ("full", f, (0, 0, rows, cols)),
        ):
            x = zero_mean_cfa(x)
            kept, filtered = jd.wiener_criterion(x, PARAMS)
            residuals[scope][f"ca-{name_}-wiener"] = filtered
            residuals[scope][f"ca-{name_}-nowiener"] = x
            rec["criteria"].setdefault(scope, {})[name_] = kept
            rec["criteria"][scope]["surviving"] = lc.surviving_fraction(region)
    if check and "ca-binary-wiener" in residuals["centre"]:  # the shortcuts above equal the library's paths
        always = jd.AwareSettings(weighting="binary", wiener="always")
        lib, _ = jd.compression_aware_residual(g_full, lc, crop=crop, settings=always)
        assert np.allclose(lib, residuals["centre"]["ca-binary-wiener"], atol=1e-5), "library path differs"
    for scope in SCOPES:
        rec["pce"].setdefault(scope, {}).update({v: fast_pces(r, spectra[scope]) for v, r in residuals[scope].items()})
    return rec


def complete(rec: dict) -> bool:
    return all(f"ca-{n}-wiener" in rec["pce"]["centre"] for n in FILTERS)


def collect(args) -> tuple[list[dict], dict]:
    data = Path(args.data)
    flats_all = sorted((data / "ff-jpg").glob("*.JPG"))
    units = sorted({unit_of(p) for p in flats_all})
    fp_flats, probes = {}, []
    for u in units:
        mine = [p for p in flats_all if unit_of(p) == u]
        fp_flats[u] = mine[: len(mine) - args.holdout]
        probes += [(p, "flat-field") for p in mine[len(mine) - args.holdout :]]
    probes += [(p, "natural") for p in sorted((data / "nat-jpg").glob("*.JPG"))]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    ks = fingerprints(fp_flats, cache)
    crop = (args.crop, args.crop)
    spectra = {
        "full": {u: FingerprintSpectrum(k) for u, k in ks.items()},
        "centre": {u: FingerprintSpectrum(np.ascontiguousarray(centre_crop(k, crop))) for u, k in ks.items()},
    }
    del ks
    done = {}
    jsonl = cache / f"probes-crop{args.crop}-holdout{args.holdout}.jsonl"
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            r = json.loads(line)
            done[(r["image"], r["quality"])] = r
    records = []
    for path, kind in probes:
        todo = [q for q in args.qualities if not complete(done.get((path.name, q), {"pce": {"centre": {}}}))]
        if todo and args.cached_only:
            continue
        pixels = load_image(path).pixels if todo else None
        for q in args.qualities:
            if q in todo:
                t = time.perf_counter()
                r = probe_record(pixels, path.name, q, crop, spectra, check=not done, have=done.get((path.name, q)))
                r |= {"unit": unit_of(path), "kind": kind}
                with open(jsonl, "a") as f:  # the last line of a probe wins when read back
                    f.write(json.dumps(r) + "\n")
                done[(path.name, q)] = r
                print(f"{path.name} q{q} {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
            records.append(done[(path.name, q)])
    meta = {
        "fingerprint_flats": {u: [p.name for p in ps] for u, ps in fp_flats.items()},
        "probes": [[p.name, k] for p, k in probes],
        "units": units,
    }
    return records, meta


# ---------------------------------------------------------------- policy and tables


CRITERIA = ("kept", "surviving")
"""Per-image Wiener criteria: energy the Wiener filter keeps of the CA residual; surviving AC fraction."""


def policy_pce(rec: dict, scope: str, cam: str, weighting: str, direction: str, thr: float, crit="kept") -> float:
    """PCE under the per-image Wiener policy: Wiener when the criterion is below (or above) ``thr``."""
    crit = rec["criteria"][scope][weighting if crit == "kept" else crit]
    apply = crit < thr if direction == "below" else crit >= thr
    variant = f"ca-{weighting}-{'wiener' if apply else 'nowiener'}"
    return rec["pce"][scope][variant][cam]


def objective(values: list[float]) -> float:
    """Mean log10 of matching PCE clipped to [1, 1000]: rewards lifting weak matches, not inflating strong ones."""
    return float(np.mean([math.log10(min(max(v, 1.0), 1000.0)) for v in values])) if values else float("nan")


def select(records: list[dict], units: list[str]) -> dict:
    """Best (weighting, criterion, direction, threshold) on ``units``: objective on matching pairs, no false alarm."""
    sel = [r for r in records if r["unit"] in units]
    table = []
    for weighting in FILTERS:
        for crit in CRITERIA:
            key = weighting if crit == "kept" else crit
            values = sorted({r["criteria"][s][key] for r in sel for s in SCOPES})
            cands = [-1.0, 1.0001] + [(a + b) / 2 for a, b in zip(values, values[1:])]
            for direction in ("below", "above"):
                for thr in cands:
                    pos, fp = [], 0
                    for r in sel:
                        for s in SCOPES:
                            for cam in r["pce"][s]["classic"]:
                                v = policy_pce(r, s, cam, weighting, direction, thr, crit)
                                if cam == r["unit"]:
                                    pos.append(v)
                                elif v > THRESHOLD:
                                    fp += 1
                    table.append((weighting, crit, direction, thr, objective(pos) if fp == 0 else -1.0))
    best = max(table, key=lambda t: t[4])  # first of equals: the earliest weighting, criterion, threshold

    def fixed(w, thr):
        return next(t[4] for t in table if t[:4] == (w, "kept", "above", thr))

    return {
        "weighting": best[0],
        "criterion": best[1],
        "direction": best[2],
        "threshold": best[3],
        "objective": best[4],
        "per_weighting_best": {
            f"{w}/{c}": max((t for t in table if t[0] == w and t[1] == c), key=lambda t: t[4])[2:]
            for w in FILTERS
            for c in CRITERIA
        },
        "always_wiener": {w: fixed(w, -1.0) for w in FILTERS},
        "never_wiener": {w: fixed(w, 1.0001) for w in FILTERS},
        "objective_definition": "mean log10 of matching PCE clipped to [1, 1000], both scopes, all qualities, "
        "natural and flat-field probes; -1 if any non-matching pair exceeds 60",
    }


ROWS = [
    ("classic", lambda r, s, c, p: r["pce"][s]["classic"][c]),
    ("classic, no Wiener", lambda r, s, c, p: r["pce"][s]["classic-nowiener"][c]),
    *[
        (f"CA {name}{' + Wiener' if w else ''}", lambda r, s, c, p, v=f"ca-{name}-{'wiener' if w else 'nowiener'}": (
            r["pce"][s][v][c]))
        for name in FILTERS
        for w in (False, True)
    ],
    (
        "CA shipped default",
        lambda r, s, c, p: policy_pce(
            r, s, c, filter_name(DEFAULT.weighting, DEFAULT.zeroed_weight), "above", DEFAULT.wiener_above,
            DEFAULT.criterion
        ),
    ),
    (
        "CA policy (per-image Wiener)",
        lambda r, s, c, p: policy_pce(r, s, c, p["weighting"], p["direction"], p["threshold"], p["criterion"]),
    ),
]


def tables(records: list[dict], units: list[str], policy: dict, qualities) -> dict:
    out = {}
    for scope in SCOPES:
        for kind in ("natural", "flat-field"):
            rows = []
            for label, fn in ROWS:
                row = {"method": label}
                for q in qualities:
                    probes = [r for r in records if r["unit"] in units and r["kind"] == kind and r["quality"] == q]
                    pos = [fn(r, scope, r["unit"], policy) for r in probes]
                    cams = [c for c in probes[0]["pce"][scope]["classic"]] if probes else []
                    neg = [fn(r, scope, c, policy) for r in probes for c in cams if c != r["unit"]]
                    row[f"q{q}"] = {
                        "median": float(np.median(pos)) if pos else None,
                        "tpr": float(np.mean(np.array(pos) > THRESHOLD)) if pos else None,
                        "fp": int(np.sum(np.array(neg) > THRESHOLD)),
                        "max_nonmatching": float(np.max(neg)) if neg else None,
                        "n_pos": len(pos),
                        "n_neg": len(neg),
                    }
                rows.append(row)
            out[f"{scope}/{kind}"] = rows
    return out


def print_tables(title: str, tabs: dict, qualities) -> None:
    print(f"\n=== {title} ===")
    for key, rows in tabs.items():
        scope, kind = key.split("/")
        n = rows[0][f"q{qualities[0]}"]
        what = "centre 1024x1024" if scope == "centre" else "full frame"
        print(f"\n-- {what}, {kind} probes ({n['n_pos']} matching, {n['n_neg']} non-matching pairs per quality) --")
        head = f"{'method':30s}" + "".join(f" | {'Q' + str(q):>5s} med   TPR  FP" for q in qualities)
        print(head)
        for row in rows:
            line = f"{row['method']:30s}"
            for q in qualities:
                c = row[f"q{q}"]
                med = "   n/a" if c["median"] is None else f"{c['median']:9.1f}"
                tpr = " n/a" if c["tpr"] is None else f"{c['tpr']:4.2f}"
                line += f" | {med} {tpr} {c['fp']:3d}"
            print(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA), help="dresden-nikon folder (ff-jpg/, nat-jpg/)")
    ap.add_argument("--out", required=True, help="folder for restoration_protocol.json")
    ap.add_argument("--cache", required=True, help="folder for fingerprints and per-probe scores")
    ap.add_argument("--crop", type=int, default=1024)
    ap.add_argument("--holdout", type=int, default=2, help="flat-fields per unit held out as probes")
    ap.add_argument("--cached-only", action="store_true", help="tables from cached probes only (a dry run)")
    ap.add_argument("--qualities", type=int, nargs="+", default=list(QUALITIES))
    args = ap.parse_args(argv)
    started = utc_now()
    records, meta = collect(args)
    units = meta["units"]
    selection = [u for u in units if u.endswith("_0")]
    report = [u for u in units if u.endswith("_1")]
    policy = select(records, selection)
    louo = {u: select(records, [v for v in selection if v != u]) for u in selection}
    chosen = {k: policy[k] for k in ("weighting", "criterion", "direction", "threshold", "objective")}
    print(f"\nselected on {', '.join(selection)}: {json.dumps(chosen)}")
    print(f"  best per weighting (direction, threshold, objective): {policy['per_weighting_best']}")
    print(f"  always Wiener: {policy['always_wiener']}  never Wiener: {policy['never_wiener']}")
    for u, p in louo.items():
        print(f"  leave out {u}: {p['weighting']} {p['criterion']} {p['direction']} {p['threshold']:.4f} "
              f"(objective {p['objective']:.3f})")
    sel_tabs = tables(records, selection, policy, args.qualities)
    rep_tabs = tables(records, report, policy, args.qualities)
    print_tables(f"SELECTION split ({', '.join(selection)}): chooses weighting and Wiener criterion", sel_tabs,
                 args.qualities)
    print_tables(f"REPORT split ({', '.join(report)}): chooses nothing", rep_tabs, args.qualities)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "protocol": __doc__,
        "settings": {"crop": args.crop, "holdout": args.holdout, "qualities": args.qualities, "threshold": THRESHOLD,
                     "subsampling": "420", "residual_params": PARAMS.as_dict(), "data": str(args.data)},
        "policy": policy,
        "leave_one_unit_out": louo,
        "selection": {"units": selection, "tables": sel_tabs},
        "report": {"units": report, "tables": rep_tabs},
        "meta": meta,
        "records": records,
        "started_utc": started,
        "finished_utc": utc_now(),
        **tool_info(),
    }
    tmp = out / ".restoration_protocol.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "restoration_protocol.json")
    print(f"\nwrote {out / 'restoration_protocol.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
