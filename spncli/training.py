"""Training of the restoration GAN: typed config, one GAN step, EMA, checkpoints, validation.

The GAN step follows the usual order: freeze D and step G on the restoration
losses plus a small adversarial term; unfreeze D and step it on a real pass
(target noise) and a detached fake pass (restored noise), with an auxiliary
quality head. The EMA of the generator is what is validated and shipped.
Checkpoints hold state dicts only and are loaded with ``weights_only=True``.

``architecture = "v2"`` trains :class:`spncli.networks.RestorationNetV2` on
:func:`spncli.camerasim.simulate_v2` pairs (compression-aware input residual,
survival map, double compression on the evidence's own grid, real PRNU
including fingerprints of the Dresden ``_0`` flat-fields). An
``adversarial_weight`` of 0 is the ablation without the GAN: the
discriminator is neither used nor stepped. Pairs can be simulated by
``workers`` processes (the simulation, not the GPU, bounds the step rate).
Validation of v2 (:class:`SelectionValidation`) is on the selection units
``_0``, per unit, so that a checkpoint can be chosen leave-one-unit-out
(:func:`leave_one_unit_out`); the report units ``_1`` choose nothing.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .camerasim import (
    REPORT_UNITS,
    ContentPool,
    PrnuPool,
    check_training_file,
    simulate,
    simulate_v2,
    write_flat_fingerprints,
)
from .losses import RestorationLoss, adversarial_loss
from .networks import ARCHITECTURES, NoiseDiscriminator, RestorationNet, build_generator
from .restoration import resolve_device

__all__ = ["TrainConfig", "load_config", "Trainer", "SelectionValidation", "leave_one_unit_out"]


@dataclass
class TrainConfig:
    """Every hyper-parameter of a training run (TOML keys of the same names)."""

    seed: int = 1
    architecture: str = "v1"
    steps: int = 3000
    batch: int = 16
    patch: int = 96
    width: int = 32
    lr_g: float = 2e-4
    lr_d: float = 1e-4
    w_l1: float = 0.1
    w_corr: float = 1.0
    w_freq: float = 0.05
    w_adv: float = 1e-3
    adversarial_weight: float | None = None
    w_aux: float = 0.1
    ema: float = 0.995
    quality_start: tuple[int, int] = (70, 95)
    quality_end: tuple[int, int] = (10, 95)
    curriculum_fraction: float = 0.6
    content: list[str] = field(default_factory=lambda: ["../shared/data/cbsd68"])
    content_downscale: float = 2.0
    prnu: str | list[str] = "../shared/data/praktica-fingerprints"
    flatfields: str = ""
    flatfield_units: str = "_0"
    flatfield_crop: int = 0
    flatfield_exclude_centre: int = 1024
    val_every: int = 500
    checkpoint_every: int = 250
    device: str = "auto"
    threads: int = 0
    workers: int = 0
    max_seconds: float = 0.0

    def __post_init__(self):
        self.quality_start = tuple(self.quality_start)
        self.quality_end = tuple(self.quality_end)
        if self.patch % RestorationNet.MULTIPLE:
            raise ValueError(f"patch must be a multiple of {RestorationNet.MULTIPLE}, got {self.patch}")
        if self.steps < 1 or self.batch < 1:
            raise ValueError("steps and batch must be >= 1")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}")
        if self.flatfield_units.endswith(REPORT_UNITS):
            raise ValueError(f"flatfield_units {self.flatfield_units!r}: the report units never train (allowed: _0)")
        if self.adversarial_weight is not None and self.adversarial_weight < 0:
            raise ValueError(f"adversarial_weight must be >= 0 (0: no GAN), got {self.adversarial_weight}")

    @property
    def adversarial(self) -> float:
        """Weight of the adversarial term: ``adversarial_weight``, else ``w_adv`` (v1 configs)."""
        return self.w_adv if self.adversarial_weight is None else self.adversarial_weight

    def as_dict(self) -> dict:
        return asdict(self)


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a TOML config, with ``overrides`` of some keys; unknown keys are an error naming the allowed ones."""
    data = tomllib.loads(Path(path).read_text()) | (overrides or {})
    allowed = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return TrainConfig(**data)


class Trainer:
    """Runs a training configuration; resumable from its last checkpoint.

    Parameters
    ----------
    config : TrainConfig
    out : Path
        Run folder: ``last.pt`` (resumable), ``ema.pt`` (EMA generator state
        dict), ``log.jsonl``.
    validate : callable or None
        ``validate(generator) -> dict`` of figures, called every
        ``config.val_every`` steps on the EMA generator.
    """

    def __init__(self, config: TrainConfig, out: Path, validate: Callable | None = None):
        self.cfg = config
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.content = ContentPool(config.content, downscale=config.content_downscale)
        prnu = [config.prnu] if isinstance(config.prnu, str) else list(config.prnu)
        if config.flatfields:
            prnu.append(self._flat_fingerprints())
        self.prnu = PrnuPool(prnu)
        self.pool = self._start_workers()  # forked before CUDA is touched
        torch.manual_seed(config.seed)
        self.g = build_generator(config.architecture, width=config.width).to(self.device)
        self.d = NoiseDiscriminator().to(self.device)
        self.ema = copy.deepcopy(self.g).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=config.lr_g, betas=(0.9, 0.99))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=config.lr_d, betas=(0.5, 0.99))
        self.loss = RestorationLoss(config.w_l1, config.w_corr, config.w_freq)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        self.step = 0
        self.rng = np.random.default_rng(config.seed)
        self.validate = validate
        self._resume()

    def _start_workers(self):
        """A pool of ``workers`` forked pair simulators (at most the CPU count less one), or None."""
        workers = min(self.cfg.workers, (os.cpu_count() or 1) - 1)
        if workers < 2:
            return None
        import multiprocessing as mp

        global _FACTORY
        _FACTORY = self._make_sample  # the forked workers inherit the pools and the config
        return mp.get_context("fork").Pool(workers)

    def _flat_fingerprints(self) -> Path:
        """Fingerprints of the ``flatfield_units`` estimated from ``flatfields`` (cached in the run folder)."""
        folder = self.out / f"prnu-flat{self.cfg.flatfield_units}"
        if not any(folder.glob("*.png")):
            crop = (self.cfg.flatfield_crop,) * 2 if self.cfg.flatfield_crop else None
            side = self.cfg.flatfield_exclude_centre
            write_flat_fingerprints(
                self.cfg.flatfields, folder, self.cfg.flatfield_units, crop, (side, side) if side else None
            )
        return folder

    def training_files(self) -> list[str]:
        """Every file the pairs are drawn from; asserts that none is of a report unit (``_1``)."""
        files = self.content.files + self.prnu.files
        for p in files:
            check_training_file(p)
        return [str(p) for p in files]

    # -- data -------------------------------------------------------------
    def quality_range(self) -> tuple[int, int]:
        """Curriculum: the drawn quality range widens from ``quality_start`` to ``quality_end``."""
        t = min(1.0, self.step / max(1.0, self.cfg.curriculum_fraction * self.cfg.steps))
        lo = round(self.cfg.quality_start[0] + t * (self.cfg.quality_end[0] - self.cfg.quality_start[0]))
        hi = round(self.cfg.quality_start[1] + t * (self.cfg.quality_end[1] - self.cfg.quality_start[1]))
        return lo, hi

    def batch(self) -> dict[str, torch.Tensor]:
        lo, hi = self.quality_range()
        seeds = self.rng.integers(0, 2**63 - 1, size=self.cfg.batch)
        qualities = self.rng.integers(lo, hi + 1, size=self.cfg.batch)
        jobs = [(int(s), int(q)) for s, q in zip(seeds, qualities)]
        if self.pool is not None:
            samples = self.pool.map(_pool_sample, jobs)
        else:
            samples = [self._make_sample(job) for job in jobs]
        keys = ("image", "residual", "target", "cond") + (("survival",) if self.cfg.architecture == "v2" else ())
        out = {k: torch.from_numpy(np.stack([getattr(s, k) for s in samples])).to(self.device) for k in keys}
        out["quality"] = torch.tensor([s.quality / 100.0 for s in samples], device=self.device)
        return out

    def _make_sample(self, job: tuple[int, int]):
        """One training pair from its own seed (the same pair in a worker process or here)."""
        seed, quality = job
        rng = np.random.default_rng(seed)
        size = self.cfg.patch + 40
        simulator = simulate_v2 if self.cfg.architecture == "v2" else simulate
        return simulator(
            self.content.draw(size, rng),
            self.prnu.draw(size, rng),
            rng,
            quality=quality,
            patch=self.cfg.patch,
            scale=RestorationNet.RESIDUAL_SCALE,
        )

    def close(self):
        """Stop the simulation workers."""
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def restored(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Input residual plus the generator's correction."""
        if self.cfg.architecture == "v2":
            return b["residual"] + self.g(b["image"], b["residual"], b["survival"], b["cond"])
        return b["residual"] + self.g(b["image"], b["residual"], b["cond"])

    # -- one GAN step -----------------------------------------------------
    def train_step(self, b: dict[str, torch.Tensor]) -> dict:
        amp = dict(device_type=self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda")
        gan = self.cfg.adversarial > 0
        for p in self.d.parameters():
            p.requires_grad_(False)
        with torch.autocast(**amp):
            restored = self.restored(b)
            total, parts = self.loss(restored.float(), b["target"])
            if gan:
                fake_logits, _ = self.d(restored.float())
                adv = adversarial_loss(fake_logits, real=True)
                total = total + self.cfg.adversarial * adv
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.opt_g)
        if not gan:  # ablation without GAN: the discriminator is neither used nor stepped
            self.scaler.update()
            self._ema_update()
            return parts | {"total": float(total.detach()), "adv": 0.0, "d": 0.0, "aux": 0.0}
        for p in self.d.parameters():
            p.requires_grad_(True)
        with torch.autocast(**amp):
            real_logits, real_q = self.d(b["target"])
            fake_logits, fake_q = self.d(restored.detach().float())
            d_loss = 0.5 * (adversarial_loss(real_logits, True) + adversarial_loss(fake_logits, False))
            aux = torch.nn.functional.mse_loss(real_q.float(), b["quality"]) + torch.nn.functional.mse_loss(
                fake_q.float(), b["quality"]
            )
            d_total = d_loss + self.cfg.w_aux * aux
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(d_total).backward()
        self.scaler.step(self.opt_d)
        self.scaler.update()
        self._ema_update()
        scalars = {"adv": adv, "d": d_loss, "aux": aux, "total": total}
        return parts | {k: float(v.detach()) for k, v in scalars.items()}

    def _ema_update(self):
        with torch.no_grad():
            for pe, pg in zip(self.ema.parameters(), self.g.parameters()):
                pe.lerp_(pg, 1 - self.cfg.ema)
            for be, bg in zip(self.ema.buffers(), self.g.buffers()):
                be.copy_(bg)

    # -- checkpoints --------------------------------------------------------
    def _resume(self):
        last = self.out / "last.pt"
        if last.exists():
            state = torch.load(last, map_location=self.device, weights_only=True)
            self.g.load_state_dict(state["g"])
            self.d.load_state_dict(state["d"])
            self.ema.load_state_dict(state["ema"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.step = int(state["step"])
            self.rng = np.random.default_rng([self.cfg.seed, self.step])

    def save(self):
        from .provenance import atomic_path

        state = {
            "g": self.g.state_dict(),
            "d": self.d.state_dict(),
            "ema": self.ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "step": self.step,
        }
        with atomic_path(self.out / "last.pt") as tmp:
            torch.save(state, tmp)
        with atomic_path(self.out / "ema.pt") as tmp:
            torch.save(self.ema.state_dict(), tmp)

    def log(self, record: dict):
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def run(self, on_step: Callable[[int, dict], None] = lambda step, parts: None) -> dict:
        """Train to ``config.steps``; returns the last validation figures."""
        started = time.perf_counter()
        last_val: dict = {}
        if self.step == 0:
            excluded = [str(p) for p in self.content.excluded + self.prnu.excluded]
            self.log(
                {
                    "config": self.cfg.as_dict(),
                    "device": str(self.device),
                    "training_files": self.training_files(),
                    "excluded_report_unit_files": excluded,
                }
            )
        while self.step < self.cfg.steps:
            parts = self.train_step(self.batch())
            self.step += 1
            out_of_time = 0 < self.cfg.max_seconds <= time.perf_counter() - started
            if out_of_time:  # the time budget ends the run like its last step
                self.cfg.steps = self.step
                self.log({"step": self.step, "stopped": f"max_seconds {self.cfg.max_seconds} reached"})
            if not all(math.isfinite(v) for v in parts.values()):
                raise FloatingPointError(f"non-finite loss at step {self.step}: {parts}")
            on_step(self.step, parts)
            if self.step % 50 == 0:
                self.log(
                    {
                        "step": self.step,
                        "seconds": round(time.perf_counter() - started, 1),
                        "quality_range": self.quality_range(),
                        **parts,
                    }
                )
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                self.save()
            if self.validate and (self.step % self.cfg.val_every == 0 or self.step == self.cfg.steps):
                last_val = self.validate(self.ema)
                self.log({"step": self.step, "validation": last_val})
                if last_val.get("score") is not None:
                    best = self.out / "best.json"
                    if not best.exists() or last_val["score"] > json.loads(best.read_text())["score"]:
                        from .provenance import atomic_path, atomic_write_json

                        with atomic_path(self.out / "best.pt") as tmp:
                            torch.save(self.ema.state_dict(), tmp)
                        atomic_write_json(best, {"step": self.step, **last_val})
        self.close()
        return last_val


_FACTORY: Callable | None = None


def _pool_sample(job):
    return _FACTORY(job)


class SelectionValidation:
    """Median matching PCE per selection unit and quality: classic, compression-aware and restored (v2).

    Probes are the centre ``crop`` of each natural image of the ``units``
    re-compressed in memory at each quality (4:2:0, as ``spn degrade``), so
    the crop is the file and its grid starts at the crop; fingerprints are
    estimated from the same units' flat-fields at the same crop, or read from
    ``<device>.png`` fingerprints of that crop (Praktica encoding,
    :func:`spncli.camerasim.write_flat_fingerprints`) when ``flats`` holds
    them. Training fingerprints of these units leave this centre region out
    (``flatfield_exclude_centre``), so validation never scores PRNU the
    network has seen.

    Parameters
    ----------
    flats, naturals : Path
        Dresden ``ff-jpg`` (or a folder of ``<device>.png`` fingerprints) and ``nat-jpg``.
    units : str
        Suffix of the selection devices (``_0``); the report units (``_1``) are refused.
    qualities : sequence of int
    crop : (rows, cols)
    """

    def __init__(self, flats, naturals, units: str = "_0", qualities=(50, 30), crop=(1024, 1024)):
        from .degrade import DegradeSettings, encode
        from .evidence import decode, load_image
        from .fingerprint import FingerprintAccumulator
        from .geometry import centre_crop
        from .pce import FingerprintSpectrum

        if units.endswith(REPORT_UNITS):
            raise ValueError(f"validation units {units!r}: the report units choose nothing (allowed: _0)")

        def cam(p):
            return Path(p).stem.rsplit("_", 1)[0]

        pngs = sorted(p for p in Path(flats).glob("*.png") if p.stem.endswith(units))
        flats = sorted(Path(flats).glob("*"))
        self.cams = sorted({cam(p) for p in flats if cam(p).endswith(units)} | {p.stem for p in pngs})
        self.spectra = {}
        import cv2

        for png in pngs:
            k = (cv2.imread(str(png), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION) - 127.5) / 32.5
            if k.shape != tuple(crop):
                raise ValueError(f"{png}: fingerprint is {k.shape[1]}x{k.shape[0]}, the validation crop {crop}")
            self.spectra[png.stem] = FingerprintSpectrum(np.ascontiguousarray(k, dtype=np.float32))
        for c in sorted(set(self.cams) - set(self.spectra)):
            acc = FingerprintAccumulator()
            for p in flats:
                if cam(p) == c:
                    acc.add(np.ascontiguousarray(centre_crop(load_image(p).pixels, crop)))
            self.spectra[c] = FingerprintSpectrum(acc.finalize())
        self.probes = []
        for p in sorted(Path(naturals).glob("*")):
            if cam(p) in self.cams:
                pixels = np.ascontiguousarray(centre_crop(load_image(p).pixels, crop))
                for q in qualities:
                    data = encode(pixels, DegradeSettings(q, "jpeg", "420"))
                    self.probes.append((decode(data, f"{p.name}.q{q}.jpg"), data, q, cam(p)))

    def __call__(self, generator) -> dict:
        """Per unit and quality, the median PCE of the true camera; ``score``: mean over units of the
        mean restored/classic ratio of their medians."""
        import torch

        from .jpegdomain import AwareSettings, coefficients_of, compression_aware_residual
        from .networks import receptive_radius
        from .pce import score
        from .residual import ResidualParams, grey_residual, postprocess
        from .restoration import Restorer

        card = {"architecture": "v2", "receptive_radius": receptive_radius(copy.deepcopy(generator).cpu(), 256)}
        device = next(generator.parameters()).device
        restorer = Restorer(generator.eval(), card, "", device)
        params = ResidualParams()
        pce: dict = {}
        for ev, data, q, true in self.probes:
            grey = grey_residual(ev.pixels, params)
            coefficients = coefficients_of(ev, data)
            aware = compression_aware_residual(grey, coefficients, params=params, settings=AwareSettings())[0]
            restored = restorer.restore(ev, grey=grey, params=params, data=data)[0]
            spec = self.spectra[true]
            for name, w in (("classic", postprocess(grey, params)), ("aware", aware), ("restored", restored)):
                pce.setdefault((true, q), {}).setdefault(name, []).append(score(w, spec).pce)
        rows = [
            {"unit": u, "quality": q} | {f"{k}_median": float(np.median(v)) for k, v in d.items()}
            for (u, q), d in sorted(pce.items())
        ]
        per_unit = {
            u: float(np.mean([r["restored_median"] / max(r["classic_median"], 1e-6) for r in rows if r["unit"] == u]))
            for u in self.cams
        }
        return {"rows": rows, "per_unit_score": per_unit, "score": float(np.mean(list(per_unit.values())))}


def leave_one_unit_out(validations: list[dict]) -> dict:
    """Leave-one-unit-out choice of a checkpoint from logged :class:`SelectionValidation` results.

    For each unit, the step with the best mean score over the *other* units is
    chosen and its score on the held-out unit reported.

    Parameters
    ----------
    validations : list of dict
        ``{"step": int, "validation": {"per_unit_score": {unit: float}}}``.

    Returns
    -------
    dict
        ``{unit: {"chosen_step", "held_out_score"}}`` and ``"mean_held_out"``.
    """
    vals = [v for v in validations if "per_unit_score" in v.get("validation", {})]
    if not vals:
        return {}
    units = sorted(vals[0]["validation"]["per_unit_score"])
    out = {}
    for u in units:
        others = [x for x in units if x != u] or [u]
        best = max(vals, key=lambda v: np.mean([v["validation"]["per_unit_score"][x] for x in others]))
        out[u] = {"chosen_step": best["step"], "held_out_score": best["validation"]["per_unit_score"][u]}
    return out | {"mean_held_out": float(np.mean([out[u]["held_out_score"] for u in units]))}
