"""Training of the restoration GAN: typed config, one GAN step, EMA, checkpoints, validation.

The GAN step follows the usual order: freeze D and step G on the restoration
losses plus a small adversarial term; unfreeze D and step it on a real pass
(target noise) and a detached fake pass (restored noise), with an auxiliary
quality head. The EMA of the generator is what is validated and shipped.
Checkpoints hold state dicts only and are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import json
import math
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .camerasim import ContentPool, PrnuPool, simulate
from .losses import RestorationLoss, adversarial_loss
from .networks import NoiseDiscriminator, RestorationNet
from .restoration import resolve_device

__all__ = ["TrainConfig", "load_config", "Trainer"]


@dataclass
class TrainConfig:
    """Every hyper-parameter of a training run (TOML keys of the same names)."""

    seed: int = 1
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
    w_aux: float = 0.1
    ema: float = 0.995
    quality_start: tuple[int, int] = (70, 95)
    quality_end: tuple[int, int] = (10, 95)
    curriculum_fraction: float = 0.6
    content: list[str] = field(default_factory=lambda: ["../shared/data/cbsd68"])
    prnu: str = "../shared/data/praktica-fingerprints"
    val_every: int = 500
    checkpoint_every: int = 250
    device: str = "auto"
    threads: int = 0

    def __post_init__(self):
        self.quality_start = tuple(self.quality_start)
        self.quality_end = tuple(self.quality_end)
        if self.patch % RestorationNet.MULTIPLE:
            raise ValueError(f"patch must be a multiple of {RestorationNet.MULTIPLE}, got {self.patch}")
        if self.steps < 1 or self.batch < 1:
            raise ValueError("steps and batch must be >= 1")

    def as_dict(self) -> dict:
        return asdict(self)


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML config; unknown keys are an error naming the allowed ones."""
    data = tomllib.loads(Path(path).read_text())
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
        torch.manual_seed(config.seed)
        self.g = RestorationNet(config.width).to(self.device)
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
        self.content = ContentPool(config.content)
        self.prnu = PrnuPool(config.prnu)
        self._resume()

    # -- data -------------------------------------------------------------
    def quality_range(self) -> tuple[int, int]:
        """Curriculum: the drawn quality range widens from ``quality_start`` to ``quality_end``."""
        t = min(1.0, self.step / max(1.0, self.cfg.curriculum_fraction * self.cfg.steps))
        lo = round(self.cfg.quality_start[0] + t * (self.cfg.quality_end[0] - self.cfg.quality_start[0]))
        hi = round(self.cfg.quality_start[1] + t * (self.cfg.quality_end[1] - self.cfg.quality_start[1]))
        return lo, hi

    def batch(self) -> dict[str, torch.Tensor]:
        lo, hi = self.quality_range()
        size = self.cfg.patch + 40
        samples = [
            simulate(
                self.content.draw(size, self.rng),
                self.prnu.draw(size, self.rng),
                self.rng,
                quality=int(self.rng.integers(lo, hi + 1)),
                patch=self.cfg.patch,
                scale=RestorationNet.RESIDUAL_SCALE,
            )
            for _ in range(self.cfg.batch)
        ]
        out = {
            k: torch.from_numpy(np.stack([getattr(s, k) for s in samples])).to(self.device)
            for k in ("image", "residual", "target", "cond")
        }
        out["quality"] = torch.tensor([s.quality / 100.0 for s in samples], device=self.device)
        return out

    # -- one GAN step -----------------------------------------------------
    def train_step(self, b: dict[str, torch.Tensor]) -> dict:
        amp = dict(device_type=self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda")
        for p in self.d.parameters():
            p.requires_grad_(False)
        with torch.autocast(**amp):
            restored = b["residual"] + self.g(b["image"], b["residual"], b["cond"])
            total, parts = self.loss(restored.float(), b["target"])
            fake_logits, _ = self.d(restored.float())
            adv = adversarial_loss(fake_logits, real=True)
            total = total + self.cfg.w_adv * adv
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.opt_g)
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
        with torch.no_grad():
            for pe, pg in zip(self.ema.parameters(), self.g.parameters()):
                pe.lerp_(pg, 1 - self.cfg.ema)
            for be, bg in zip(self.ema.buffers(), self.g.buffers()):
                be.copy_(bg)
        scalars = {"adv": adv, "d": d_loss, "aux": aux, "total": total}
        return parts | {k: float(v.detach()) for k, v in scalars.items()}

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
            self.log({"config": self.cfg.as_dict(), "device": str(self.device)})
        while self.step < self.cfg.steps:
            parts = self.train_step(self.batch())
            self.step += 1
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
        return last_val
