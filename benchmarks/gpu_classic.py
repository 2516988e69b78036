"""GPU checks and timings of the classic pipeline: CUDA (``spncli.torchclassic``) against the numpy reference.

For the one prepared GPU run. Two steps:

``prepare`` (on the CPU machine) copies a subset of the Dresden Nikon images, which the GPU machine
cannot see, into an ignored folder of the checkout, laid out as ``TO/dresden-nikon/{ff-jpg,nat-jpg}``
(so ``SPN_SHARED_DATA=TO`` also lets ``tests/test_torchclassic.py`` run its CUDA test there), with a
manifest of SHA-256s. Default: the four D70/D70s cameras, 4 flat-fields each and all their natural
images (about 23 MB).

``run`` (on the GPU machine) writes one JSON (``--out``):

* ``dresden``: for every camera of ``--data``, the ML fingerprint on CUDA and on the numpy path
  (max |diff|); for every natural image, the residual (max |diff|) and its PCE against every camera
  on both paths (max relative diff, 1e-3 absolute floor), the decisions at PCE 60 (equal or not,
  and whether the consistent pairs name the right camera), and ``spn match``'s Matcher end to end
  with ``device="cuda"`` against ``device="cpu"``;
* ``throughput``: ``--megapixels`` MP synthetic images against ``--cameras`` synthetic cameras:
  GPU residual seconds, GPU PCE seconds (all cameras, batched), images/s for the two together,
  images/s through the Matcher (host arrays in, records out), the host's JPEG decode seconds for
  such an image (one core), the numpy path's seconds per image on the host (``--cpu-images``),
  and the peak GPU memory of each phase;
* ``host``: card, torch and CUDA versions, how ``--device auto`` resolved.

``--smoke`` runs the same code on the CPU with torch standing in for CUDA, small sizes: to check
the script where no GPU exists (its figures are not GPU figures).

Usage::

    python benchmarks/gpu_classic.py prepare --data ../shared/data/dresden-nikon --to .gpu/data
    python benchmarks/gpu_classic.py run --data .gpu/data/dresden-nikon --out OUT/gpu_classic.json
    python benchmarks/gpu_classic.py run --smoke --data ../shared/data/dresden-nikon --out /tmp/g.json
    python benchmarks/gpu_classic.py cpu-residual [--megapixels 12] [--threads 1] [--repeat 3]

Every input's SHA-256 is in the JSON (``manifest`` of ``prepare``; ``sha256`` per image of ``run``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

THRESHOLD = 60.0
DEFAULT_CAMERAS = ("Nikon_D70_0", "Nikon_D70_1", "Nikon_D70s_0", "Nikon_D70s_1")


def camera_of(path: Path) -> str:
    return path.stem.rsplit("_", 1)[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(args) -> int:
    """Copy a subset of the Dresden folder (read-only source) with a SHA-256 manifest."""
    src, dst = Path(args.data), Path(args.to) / "dresden-nikon"
    cameras = args.camera or list(DEFAULT_CAMERAS)
    manifest = []
    for sub, limit in (("ff-jpg", args.flats), ("nat-jpg", None)):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for cam in cameras:
            files = sorted((src / sub).glob(f"{cam}_*.JPG"))
            for f in files[:limit] if limit else files:
                target = dst / sub / f.name
                tmp = target.with_name(target.name + ".part")
                shutil.copyfile(f, tmp)
                os.replace(tmp, target)
                manifest.append({"file": f"{sub}/{f.name}", "source": str(f), "sha256": sha256(target)})
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    size = sum((dst / m["file"]).stat().st_size for m in manifest)
    print(f"{len(manifest)} file(s), {size / 2**20:.1f} MiB in {dst}")
    return 0


class Clock:
    """Wall seconds of a phase, synchronised with the device first and last."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, str(device).startswith("cuda")

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def __enter__(self):
        self.sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.t0
        self.peak = self.torch.cuda.max_memory_allocated() if self.cuda else None


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-3)


def dresden_checks(args, torch, device, request, summary) -> dict:
    from spncli import pce, torchclassic
    from spncli.evidence import load_image
    from spncli.fingerprint import FingerprintAccumulator
    from spncli.identify import Matcher, MatchSettings, cropped_pixels
    from spncli.residual import extract_residual
    from spncli.store import Fingerprint

    data = Path(args.data)
    crop = (384, 512) if args.smoke else None
    flats = {}
    for f in sorted((data / "ff-jpg").glob("*.JPG")):
        flats.setdefault(camera_of(f), []).append(f)
    if args.smoke:
        flats = {c: fs[:2] for c, fs in list(flats.items())[:2]}
    naturals = [f for f in sorted((data / "nat-jpg").glob("*.JPG")) if camera_of(f) in flats]
    if args.smoke:
        naturals = naturals[:3]
    out = {"crop": crop, "threshold": THRESHOLD, "cameras": {}, "images": []}
    spectra, fps = {}, []
    for cam, files in flats.items():
        ref, got = FingerprintAccumulator(), torchclassic.TorchFingerprintAccumulator(device=device)
        with Clock(torch, device) as c_gpu:
            for f in files:
                ev = load_image(f)
                got.add(cropped_pixels(ev, crop), ev.saturation)
            k_got = got.finalize()
        t0 = time.perf_counter()
        for f in files:
            ev = load_image(f)
            ref.add(cropped_pixels(ev, crop), ev.saturation)
        k_ref = ref.finalize()
        out["cameras"][cam] = {
            "flats": [{"name": f.name, "sha256": sha256(f)} for f in files],
            "shape": list(k_ref.shape),
            "k_max_abs_diff": float(np.abs(k_got - k_ref).max()),
            "k_max_abs": float(np.abs(k_ref).max()),
            "seconds_torch": round(c_gpu.seconds, 3),
            "seconds_numpy": round(time.perf_counter() - t0, 3),
            "peak_gpu_bytes": c_gpu.peak,
        }
        spectra[cam] = pce.FingerprintSpectrum(k_ref)
        fps.append(Fingerprint(cam, k_ref, hashlib.sha256(k_ref.tobytes()).hexdigest(), {}))
    cameras = list(spectra)
    worst_res = worst_pce = 0.0
    equal = total = right = consistent = 0
    for f in naturals:
        ev = load_image(f)
        px = cropped_pixels(ev, crop)
        w_ref = extract_residual(px)
        with Clock(torch, device) as c_res:
            w_got = torchclassic.to_numpy(torchclassic.extract_residual(px, device=device))
        with Clock(torch, device) as c_pce:
            got = torchclassic.score_many(w_ref, cameras, spectra, device=device)
        row = {"name": f.name, "sha256": ev.sha256, "shape": list(w_ref.shape),
               "residual_max_abs_diff": float(np.abs(w_got - w_ref).max()),
               "residual_std": float(w_ref.std()), "seconds_residual_torch": round(c_res.seconds, 4),
               "seconds_pce_torch": round(c_pce.seconds, 4), "pce": {}}  # fmt: skip
        worst_res = max(worst_res, row["residual_max_abs_diff"])
        for cam in cameras:
            ref = pce.score(w_ref, spectra[cam])
            d_ref, d_got = ref.pce > THRESHOLD, got[cam].pce > THRESHOLD
            row["pce"][cam] = {"numpy": round(ref.pce, 4), "torch": round(got[cam].pce, 4)}
            worst_pce = max(worst_pce, rel(got[cam].pce, ref.pce))
            equal += d_ref == d_got
            total += 1
            consistent += d_got
            right += d_got and cam == camera_of(f)
        out["images"].append(row)
    # the Matcher end to end (spn match's path) on the device against the numpy path
    settings = MatchSettings(crop=crop, threshold=THRESHOLD)
    m_ref, m_got = Matcher(fps, settings), Matcher(fps, settings, device=request)
    matcher_equal = matcher_total = 0
    matcher_worst = 0.0
    for f in naturals:
        ev = load_image(f)
        for a, b in zip(m_ref.match(ev), m_got.match(ev)):
            matcher_equal += a["decision"] == b["decision"]
            matcher_total += 1
            matcher_worst = max(matcher_worst, rel(b["pce"], a["pce"]))
            backend = b["backend"]
    out["summary"] = {
        "residual_max_abs_diff": worst_res,
        "pce_max_relative_diff": worst_pce,
        "decisions_equal": f"{equal}/{total}",
        "consistent_pairs_torch": consistent,
        "consistent_pairs_right_camera": right,
        "matcher_decisions_equal": f"{matcher_equal}/{matcher_total}",
        "matcher_pce_max_relative_diff": matcher_worst,
        "matcher_backend": backend if naturals else None,
        "fingerprint_max_abs_diff": max((c["k_max_abs_diff"] for c in out["cameras"].values()), default=None),
    }
    summary["dresden"] = out["summary"]
    return out


def throughput(args, torch, device, request, summary) -> dict:
    import cv2

    from spncli import pce, torchclassic
    from spncli.evidence import decode
    from spncli.identify import Matcher, MatchSettings
    from spncli.residual import extract_residual
    from spncli.store import Fingerprint

    mp = args.megapixels
    rows = int(round(np.sqrt(mp * 1e6 * 3 / 4)))
    shape = (rows, int(round(rows * 4 / 3)))
    rng = np.random.default_rng(20261127)
    cams = [f"synthetic_{i:03d}" for i in range(args.cameras)]
    t0 = time.perf_counter()
    spectra, fps = {}, []
    for cam in cams:
        k = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
        spectra[cam] = pce.FingerprintSpectrum(k)
        fps.append(Fingerprint(cam, k, "0" * 64, {}))
    seconds_setup = time.perf_counter() - t0
    images = [rng.uniform(0, 255, (*shape, 3)).astype(np.float32) for _ in range(min(args.images, 4))]
    # warm-up: kernels, cuFFT plans, the fingerprint spectra uploaded once
    with Clock(torch, device) as c_up:
        w = torchclassic.to_numpy(torchclassic.extract_residual(images[0], device=device))
        torchclassic.score_many(w, cams, spectra, device=device)
    res_s, pce_s = [], []
    with Clock(torch, device) as c_all:
        for i in range(args.images):
            with Clock(torch, device) as c1:  # the residual stays on the device
                w = torchclassic.extract_residual(images[i % len(images)], device=device)
            with Clock(torch, device) as c2:
                scores = torchclassic.score_many(w, cams, spectra, device=device)
            res_s.append(c1.seconds)
            pce_s.append(c2.seconds)
    assert len(scores) == len(cams)
    peak_res, peak_pce = c1.peak, c2.peak
    # the Matcher (spn match's path): decoded pixels in, one record per camera out
    ok, jpeg = cv2.imencode(".jpg", images[0].astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
    data = jpeg.tobytes()
    t0 = time.perf_counter()
    ev = decode(data, "synthetic.jpg")
    seconds_decode = time.perf_counter() - t0
    matcher = Matcher(fps, MatchSettings(), device=request)
    matcher.match(ev)  # warm-up
    n_match = max(1, args.images // 2)
    with Clock(torch, device) as c_match:
        for _ in range(n_match):
            records = matcher.match(ev)
    assert len(records) == len(cams)
    cpu = []
    for i in range(args.cpu_images):
        t0 = time.perf_counter()
        w = extract_residual(images[i % len(images)])
        probe = pce.ResidualSpectrum(w)
        for cam in cams:
            pce.score(probe, spectra[cam])
        cpu.append(time.perf_counter() - t0)
    med = float(np.median(res_s)), float(np.median(pce_s))
    out = {
        "megapixels": mp,
        "shape": list(shape),
        "cameras": args.cameras,
        "images_timed": args.images,
        "seconds_setup_host_spectra": round(seconds_setup, 2),
        "seconds_warmup_incl_upload": round(c_up.seconds, 3),
        "seconds_residual_median": round(med[0], 5),
        "seconds_pce_all_cameras_median": round(med[1], 5),
        "images_per_s_residual_plus_pce": round(args.images / sum(r + p for r, p in zip(res_s, pce_s)), 2),
        "images_per_s_loop_wall": round(args.images / c_all.seconds, 2),
        "images_per_s_matcher": round(n_match / c_match.seconds, 2),
        "seconds_host_jpeg_decode_one_core": round(seconds_decode, 3),
        "seconds_numpy_per_image": [round(s, 2) for s in cpu],
        "peak_gpu_bytes_residual": peak_res,
        "peak_gpu_bytes_pce": peak_pce,
        "peak_gpu_bytes_matcher": c_match.peak,
        "peak_gpu_bytes_warmup": c_up.peak,
        "note": "pixels already decoded in host memory; the decode is timed apart (one host core); "
        "residual_plus_pce keeps the residual on the device, the Matcher brings it to the host and back",
    }
    summary["throughput"] = {k: out[k] for k in ("images_per_s_residual_plus_pce", "images_per_s_matcher",
                                                 "seconds_numpy_per_image", "peak_gpu_bytes_pce")}  # fmt: skip
    return out


def run(args) -> int:
    import torch

    from spncli import __version__, device as devices

    torch.set_num_threads(1 if args.smoke else torch.get_num_threads())
    cuda = torch.cuda.is_available()
    if args.smoke:
        device, request = "cpu", devices.TORCH_CPU
        args.megapixels, args.cameras, args.images, args.cpu_images = 1, 4, 2, 1
    elif not cuda:
        print("error: no CUDA GPU here (use --smoke to check the script on the CPU)", file=sys.stderr)
        return 2
    else:
        device, request = "cuda", "cuda"
    host = {
        "spn_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "card": torch.cuda.get_device_name(0) if cuda else None,
        "smoke": args.smoke,
        "torch_device": device,
        "gpu_present_cheap_check": devices.gpu_present(),
        "auto_resolves_to": devices.resolve_device("auto"),
        "cpu_cores": os.cpu_count(),
    }
    summary: dict = {}
    result = {"host": host, "summary": summary, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t0 = time.perf_counter()
    for name, phase in (("dresden", dresden_checks), ("throughput", throughput)):
        if name in args.skip:
            continue
        try:
            result[name] = phase(args, torch, device, request, summary)
        except Exception as exc:  # a failed phase is a finding: recorded, the other phase still runs
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            summary[name] = result[name]
        _write(args.out, result)
    result["seconds_total"] = round(time.perf_counter() - t0, 1)
    _write(args.out, result)
    print(json.dumps({"host": host, "summary": summary}, indent=1))
    return 0


def cpu_residual(args) -> int:
    """User CPU and wall seconds of one residual on the host: numpy path against torch on the CPU."""
    import resource

    import torch

    from spncli import torchclassic
    from spncli.residual import extract_residual

    rows = int(round(np.sqrt(args.megapixels * 1e6 * 3 / 4)))
    shape = (rows, int(round(rows * 4 / 3)))
    px = np.random.default_rng(7).uniform(0, 255, (*shape, 3)).astype(np.float32)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    def measure(fn):
        fn()  # warm-up
        best = None
        for _ in range(args.repeat):
            u0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime, time.perf_counter()
            fn()
            u, t = resource.getrusage(resource.RUSAGE_SELF).ru_utime - u0, time.perf_counter() - t0
            best = (u, t) if best is None or u < best[0] else best
        return {"user_s": round(best[0], 3), "wall_s": round(best[1], 3)}

    out = {
        "shape": list(shape),
        "repeat_best_of": args.repeat,
        "torch_threads": threads,
        "numpy": measure(lambda: extract_residual(px)),
        "torch_cpu_float32": measure(lambda: torchclassic.extract_residual(px, device="cpu")),
    }
    print(json.dumps(out, indent=1))
    return 0


def _write(path, result) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="copy a Dresden subset into the checkout (CPU machine)")
    p.add_argument("--data", required=True, help="the Dresden folder (ff-jpg/, nat-jpg/)")
    p.add_argument("--to", required=True, help="an ignored folder of the checkout, e.g. .gpu/data")
    p.add_argument("--flats", type=int, default=4, help="flat-fields per camera (default 4)")
    p.add_argument("--camera", action="append", help=f"cameras (repeatable; default {', '.join(DEFAULT_CAMERAS)})")
    r = sub.add_parser("run", help="the checks and timings (GPU machine; --smoke on a CPU)")
    r.add_argument("--data", required=True, help="a Dresden folder with ff-jpg/ and nat-jpg/")
    r.add_argument("--out", required=True, help="JSON written here (atomically, after each phase)")
    r.add_argument("--megapixels", type=float, default=12.0)
    r.add_argument("--cameras", type=int, default=50)
    r.add_argument("--images", type=int, default=20, help="images timed on the GPU (default 20)")
    r.add_argument("--cpu-images", type=int, default=1, help="images timed on the numpy path (default 1)")
    r.add_argument("--skip", action="append", default=[], choices=["dresden", "throughput"])
    r.add_argument("--smoke", action="store_true", help="CPU check of the script: torch on the CPU, small sizes")
    c = sub.add_parser("cpu-residual", help="numpy against torch-on-CPU for one residual (user CPU seconds)")
    c.add_argument("--megapixels", type=float, default=12.0)
    c.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    c.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    return {"prepare": prepare, "run": run, "cpu-residual": cpu_residual}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
