"""Restored sensor noise: the classic residual corrected by the GAN generator, tile by tile.

The weights are loaded from an explicit path and checked against the SHA-256
recorded in their model card; ``torch.load(weights_only=True)`` never
unpickles arbitrary objects. Inference runs over overlapping tiles whose
context margin exceeds the generator's receptive field, blended with a
Hann-tapered window: memory is bounded by the tile, no seam shows, and the
result equals whole-image inference to float tolerance. On CUDA it runs
under fp16 or bf16 autocast, on the CPU in float32.

The post-processing of the restored residual is part of what is conditioned
on the quality: CFA zero-mean always, the spectral Wiener filter only above
the quality recorded in the model card (on re-compressed probes it removed
more PRNU than JPEG artefacts), and the network's correction only at or
below the quality the card records (above it the correction was measured to
lower the PCE); see the model card's measurements.

A v2 card (``"architecture": "v2"``, :class:`spncli.networks.RestorationNetV2`)
refines the compression-aware residual instead: the full frame's grey
residual filtered on the file's own 8x8 grid and centre-cropped
(:func:`spncli.conditioning.network_inputs`, the very function that makes the
training pairs), with the file's per-block survival map pooled on each tile's
8x8 grid (tiles start on multiples of 16 of the crop); then CFA zero-mean and
the spectral Wiener filter per image by the compression-aware criterion (the
surviving AC fraction, :class:`spncli.jpegdomain.AwareSettings`). A file
without DCT coefficients (PNG, TIFF, CMYK JPEG) gets the classic residual,
and the record says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .conditioning import NoQuantizationTables, condition_vector, network_inputs, pool_survival
from .provenance import atomic_write_bytes, atomic_write_json, read_regular_file
from .evidence import Evidence
from .jpegdomain import AwareSettings, NoCoefficients, coefficients_of
from .jpegtables import ijg_tables
from .networks import ARCHITECTURES, RestorationNet, build_generator
from .modelcards import DEFAULT_CARD, TEXTURED_BLOCK_STD_ABOVE, policy_text
from .residual import ResidualParams, grey_residual, postprocess

__all__ = [
    "DEFAULT_MODEL",
    "ModelError",
    "Restorer",
    "load_restorer",
    "write_model_card",
    "tile_slices",
    "hann_window",
    "TILE_MULTIPLE",
    "MIN_TILE",
    "check_tile",
    "resolve_device",
    "NoQuantizationTables",
    "card_architecture",
]

DEFAULT_MODEL = DEFAULT_CARD


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available (allowed: auto, cpu, cuda)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not one of auto, cpu, cuda")
    return torch.device(name)


class ModelError(Exception):
    """The model card or weights cannot be used (``str()`` names the file and the reason)."""


TILE_MULTIPLE = 16
"""Tile sides are multiples of this: tile starts keep the CFA, JPEG and pooling grids of the whole image."""

MIN_TILE = 64
"""Smallest tile side (pixels)."""


def check_tile(tile: int) -> int:
    """Return ``tile`` if it is a tile side the network can run, else ValueError naming the allowed values."""
    if tile < MIN_TILE or tile % TILE_MULTIPLE:
        raise ValueError(
            f"tile {tile} is not allowed: use a multiple of {TILE_MULTIPLE} of at least {MIN_TILE} "
            f"(e.g. {max(MIN_TILE, -(-tile // TILE_MULTIPLE) * TILE_MULTIPLE)}, or 1024)"
        )
    return tile


def hann_window(size: int, taper: int) -> np.ndarray:
    """1-D window: flat 1 in the middle, half-Hann ramps of ``taper`` samples at both ends (floor 1e-3)."""
    w = np.ones(size, np.float32)
    if taper > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(taper) + 0.5) / taper)
        w[:taper] = ramp
        w[size - taper :] = ramp[::-1]
    return np.maximum(w, 1e-3)


def tile_slices(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Start/stop of tiles of ``tile`` samples overlapping by ``overlap`` covering ``length``.

    Starts are multiples of 16 (keeps the CFA and JPEG grid phase and the
    network's pooling grid aligned with whole-image inference).
    """
    if tile >= length:
        return [(0, length)]
    step = max(16, (tile - overlap) // 16 * 16)
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(-(-(length - tile) // 16) * 16)  # ceil to 16: reaches the end, no gap
    return [(s, min(s + tile, length)) for s in starts]


@dataclass
class Restorer:
    """A loaded generator with its card.

    Attributes
    ----------
    model : RestorationNet
    card : dict
        The model card (JSON) the weights were loaded with.
    weights_sha256 : str
    device : torch.device
    """

    model: RestorationNet
    card: dict
    weights_sha256: str
    device: torch.device
    device_request: str = "auto"

    def _place(self) -> None:
        """With ``auto``, move to CUDA where this process sees a GPU (e.g. a Dask GPU worker)."""
        if self.device_request == "auto" and self.device.type != "cuda" and torch.cuda.is_available():
            self.device = torch.device("cuda")
            self.model.to(self.device)

    @property
    def architecture(self) -> str:
        """``v1`` (refines the classic residual) or ``v2`` (the compression-aware one)."""
        return card_architecture(self.card)[0]

    @property
    def wiener_min_quality(self) -> int:
        """Probe residuals are spectrally Wiener-filtered only above this quality."""
        return int(self.card.get("postprocess", {}).get("wiener_dft_above_quality", 80))

    @property
    def network_max_quality(self) -> int:
        """The network's correction is applied at or below this quality (above it, it was measured to hurt)."""
        return int(self.card.get("postprocess", {}).get("network_at_or_below_quality", 100))

    @property
    def network_min_textured(self) -> tuple[float, float]:
        """v2: the network's correction needs at least this fraction of textured blocks (and their std, grey levels).

        Below it (flat content: sky, walls, flat-fields) the output is the compression-aware residual itself.
        Cards without the field apply the network whatever the content.
        """
        post = self.card.get("postprocess", {})
        least = float(post.get("network_min_textured_fraction", 0.0))
        return least, float(post.get("textured_block_std_above", TEXTURED_BLOCK_STD_ABOVE))

    def _above_quality(self, q: int) -> str | None:
        """Why the network is not applied at quality ``q`` by the card's quality bound, or None."""
        return f"quality {q} above {self.network_max_quality}" if q > self.network_max_quality else None

    def condition(self, ev: Evidence, quality: int | None) -> tuple[np.ndarray, int]:
        """Condition vector from the file's tables, or from ``quality`` for files without them.

        Raises
        ------
        NoQuantizationTables
            The file has no quantization tables (PNG, TIFF, WebP, ...) and ``quality`` is None:
            the compression level is never assumed.
        """
        if ev.jpeg is not None and ev.quality is not None:
            luma = ev.jpeg.tables[ev.jpeg.components[0].table_id]
            return condition_vector(ev.quality.quality, luma), ev.quality.quality
        if quality is None:
            raise NoQuantizationTables(
                f"no JPEG quantization tables ({ev.format}): the compression level is unknown; "
                "give --quality 1-100 to restore it"
            )
        return condition_vector(quality, ijg_tables(quality)[0]), quality

    def correction(
        self,
        pixels: np.ndarray,
        residual: np.ndarray,
        cond: np.ndarray,
        *,
        tile: int = 1024,
        precision: str = "auto",
        survival: np.ndarray | None = None,
    ) -> np.ndarray:
        """The generator's correction ΔW of a residual, computed over tiles.

        Parameters
        ----------
        pixels : ndarray (M, N, C) float32 0..255
        residual : ndarray (M, N) float32
            Classic grey residual before post-processing.
        cond : ndarray (COND_DIM,)
        tile : int
            Core tile side (multiple of 16); each tile is run with a context
            margin of the receptive field and blended with a Hann taper.
        precision : str
            ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16`` or ``bf16``.
        survival : ndarray (M, N, SURVIVAL_CHANNELS) or None
            v2 only: the per-pixel (block-constant) survival map of the same
            region (:func:`spncli.conditioning.network_inputs`), pooled over
            the 8x8 cells of each tile.
        """
        check_tile(tile)
        if (survival is None) != (self.architecture == "v1"):
            verb = "needs" if survival is None else "takes no"
            raise ValueError(f"the {self.architecture} network {verb} survival map")
        self._place()
        rows, cols = residual.shape
        margin = int(self.card["receptive_radius"]) + 16
        margin += (-margin) % 16
        mult = RestorationNet.MULTIPLE
        pr, pc = (-rows) % mult, (-cols) % mult
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        img = np.pad(pixels, ((0, pr), (0, pc), (0, 0)), mode="reflect") if pr or pc else pixels
        res = np.pad(residual, ((0, pr), (0, pc)), mode="reflect") if pr or pc else residual
        if survival is not None and (pr or pc):
            survival = np.pad(survival, ((0, pr), (0, pc), (0, 0)), mode="edge")
        h, w = res.shape
        dtype = _autocast_dtype(self.device, precision)
        cond_t = torch.from_numpy(cond)[None].to(self.device)
        out = np.zeros((h, w), np.float32)
        weight = np.zeros((h, w), np.float32)
        taper = min(64, tile // 4)
        for r0, r1 in tile_slices(h, tile, 2 * taper):
            for c0, c1 in tile_slices(w, tile, 2 * taper):
                a0, a1 = max(r0 - margin, 0), min(r1 + margin, h)
                b0, b1 = max(c0 - margin, 0), min(c1 + margin, w)
                x = torch.from_numpy(np.ascontiguousarray(img[a0:a1, b0:b1].transpose(2, 0, 1)) / 255.0 - 0.5)
                rr = torch.from_numpy(np.ascontiguousarray(res[a0:a1, b0:b1]) / RestorationNet.RESIDUAL_SCALE)
                inputs = [x[None].float().to(self.device), rr[None, None].float().to(self.device)]
                if survival is not None:  # a0, b0 are multiples of 16: the tile's 8x8 cells are the region's
                    inputs.append(torch.from_numpy(pool_survival(survival[a0:a1, b0:b1]))[None].to(self.device))
                with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
                    pred = self.model(*inputs, cond_t)
                pred = pred.float()[0, 0].cpu().numpy() * RestorationNet.RESIDUAL_SCALE
                core = pred[r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
                win = np.outer(hann_window(r1 - r0, taper), hann_window(c1 - c0, taper))
                out[r0:r1, c0:c1] += win * core
                weight[r0:r1, c0:c1] += win
        return (out / weight)[:rows, :cols]

    def restore(
        self,
        ev: Evidence,
        pixels: np.ndarray | None = None,
        *,
        grey: np.ndarray | None = None,
        quality: int | None = None,
        params: ResidualParams = ResidualParams(),
        tile: int = 1024,
        precision: str = "auto",
        data: bytes | None = None,
    ):
        """Restored, post-processed residual of an evidence image.

        ``pixels`` (default: the evidence's, e.g. a crop of them) and ``grey``
        (their classic grey residual before post-processing) may be passed to
        avoid recomputation. ``data`` (v2): the file's bytes when the evidence
        was decoded in memory (otherwise its file is read again and checked
        against its SHA-256). With a v2 network, ``pixels`` must be the centre
        crop of the evidence (:func:`spncli.identify.cropped_pixels`): the
        compression-aware residual is computed on the full frame, then cropped.

        Returns
        -------
        restored : ndarray (M, N) float32
        info : dict
            Quality used, post-processing applied, tile, precision, weights SHA-256.
        """
        pixels = ev.pixels if pixels is None else pixels
        if self.architecture == "v2":
            return self._restore_v2(ev, pixels, grey, quality, params, tile, precision, data)
        grey = grey_residual(pixels, params) if grey is None else grey
        cond, q = self.condition(ev, quality)
        skipped = self._above_quality(q)
        restored = grey + self.correction(pixels, grey, cond, tile=tile, precision=precision) if not skipped else grey
        wiener = q > self.wiener_min_quality
        return _finish(restored, wiener, params), {
            "restored": True,
            "input_residual": "classic",
            "quality_used": q,
            "network_applied": not skipped,
            "wiener_dft": wiener,
        } | ({"network_skipped": skipped} if skipped else {}) | self._record(tile, precision)

    def _record(self, tile: int, precision: str) -> dict:
        return {
            "tile": tile,
            "precision": str(_autocast_dtype(self.device, precision)).replace("torch.", ""),
            "device": str(self.device),
            "model": self.card.get("name"),
            "architecture": self.architecture,
            "weights_sha256": self.weights_sha256,
            "policy": policy_text(self.card),  # what this card applied: a later card may change it
        }

    def _restore_v2(self, ev, pixels, grey, quality, params, tile, precision, data):
        """v2: the compression-aware residual of the full frame, cropped, plus the network's correction."""
        cond, q = self.condition(ev, quality)
        crop = None if tuple(pixels.shape[:2]) == tuple(ev.shape[:2]) else tuple(pixels.shape[:2])
        try:
            coefficients = coefficients_of(ev, data)
        except NoCoefficients as exc:
            grey = grey_residual(pixels, params) if grey is None else grey
            return postprocess(grey, params), {
                "restored": False,
                "input_residual": "classic",
                "quality_used": q,
                "network_applied": False,
                "wiener_dft": params.wiener_dft,
                "restoration_skipped": f"{exc}: classic residual",
            } | self._record(tile, precision)
        full = grey if crop is None and grey is not None else grey_residual(ev.pixels, params)
        residual, survival, info = network_inputs(full, coefficients, crop, params)
        r0, c0 = info["crop_offsets"]
        least, std_above = self.network_min_textured
        textured = coefficients.textured_fraction((r0, c0, r0 + residual.shape[0], c0 + residual.shape[1]), std_above)
        skipped = self._above_quality(q) or (  # then the compression-aware residual as it is
            f"flat content: {textured:.2%} textured blocks, the card's policy needs {least:.2%}"
            if textured < least
            else None
        )
        if not skipped:
            residual = residual + self.correction(pixels, residual, cond, tile=tile, precision=precision,
                                                  survival=survival)  # fmt: skip
        post = self.card.get("postprocess", {})
        above = float(post.get("wiener_surviving_at_or_above", AwareSettings().wiener_above))
        wiener = info["surviving_ac_fraction"] >= above
        return _finish(residual, wiener, params), {
            "restored": True,
            "input_residual": "compression-aware",
            "quality_used": q,
            "network_applied": not skipped,
            "wiener_dft": bool(wiener),
            "surviving_ac_fraction": info["surviving_ac_fraction"],
            "textured_block_fraction": round(textured, 6),
            "crop_offsets": info["crop_offsets"],
            "aware_settings": info["aware_settings"],
        } | ({"network_skipped": skipped} if skipped else {}) | self._record(tile, precision)


def _finish(residual: np.ndarray, wiener: bool, params: ResidualParams) -> np.ndarray:
    """A restored residual's post-processing: CFA zero-mean, then the spectral Wiener filter when the card's
    policy says so (float32, contiguous)."""
    return postprocess(residual, replace(params, zero_mean=True, wiener_dft=wiener))


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype:
    allowed = {"auto", "fp32", "fp16", "bf16"}
    if precision not in allowed:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(sorted(allowed))}")
    if device.type != "cuda" or precision == "fp32":
        return torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _card_problem(card) -> str | None:
    """What makes a parsed model card unusable (``None``: usable), before any weights are read."""
    if not isinstance(card, dict):
        return f"a JSON object is expected, not {type(card).__name__}"
    weights = card.get("weights")
    if not isinstance(weights, str) or not weights or "/" in weights or "\\" in weights or weights in (".", ".."):
        return "'weights' must name a file beside the card (no folders)"
    if not isinstance(card.get("weights_sha256"), str):
        return "'weights_sha256' is missing"
    arch = card.get("architecture", {})
    if not (isinstance(arch, dict) or (isinstance(arch, str) and arch in ARCHITECTURES)):
        return f"'architecture' must be one of {', '.join(ARCHITECTURES)} or an object of RestorationNet arguments"
    if not isinstance(card.get("architecture_args", {}), dict):
        return "'architecture_args' must be an object of the network's arguments"
    radius = card.get("receptive_radius")
    if not isinstance(radius, int) or isinstance(radius, bool) or radius < 0:
        return "'receptive_radius' must be a non-negative integer"
    return None


def card_architecture(card: dict) -> tuple[str, dict]:
    """Architecture name and arguments of a card: ``"architecture": "v2"`` with ``architecture_args``,
    or (v1 cards) ``"architecture": {arguments}``."""
    arch = card.get("architecture", {})
    if isinstance(arch, str):
        return arch, dict(card.get("architecture_args", {}))
    return "v1", dict(arch)


def load_restorer(card_path: str | Path = DEFAULT_MODEL, device: str = "auto") -> Restorer:
    """Load a generator from its model card (JSON) and verify the weights' SHA-256.

    The card names the weights file (beside it), their SHA-256, the
    architecture arguments and the measured receptive radius.

    Raises
    ------
    ModelError
        Missing files, checksum mismatch, or weights that do not fit.
    """
    card_path = Path(card_path)
    try:
        card = json.loads(read_regular_file(card_path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{card_path}: cannot read the model card ({exc})") from None
    problem = _card_problem(card)
    if problem:
        raise ModelError(f"{card_path}: not a usable model card: {problem}")
    weights_path = card_path.parent / card["weights"]
    try:
        data = read_regular_file(weights_path)
    except OSError as exc:
        raise ModelError(f"{weights_path}: cannot read the weights the model card names ({exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.get("weights_sha256"):
        raise ModelError(f"{weights_path}: SHA-256 {digest[:16]}... does not match the model card's; not used")
    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    try:
        name, args = card_architecture(card)
        model = build_generator(name, **args)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{card_path}: the card's architecture cannot be built ({exc})") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses any pickle that is not plain tensors (nothing is run)
        raise ModelError(
            f"{weights_path}: not a plain tensor state dict: torch.load(weights_only=True) refused it "
            f"({type(exc).__name__}); nothing in it was run"
        ) from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{weights_path}: weights do not fit the architecture ({exc})") from None
    return Restorer(model.to(dev).eval(), card, digest, dev, device)


def write_model_card(
    weights: str | Path,
    out_dir: str | Path,
    name: str,
    fields: dict | None = None,
    wiener_dft_above_quality: int = 80,
    network_at_or_below_quality: int = 100,
    network_min_textured_fraction: float = 0.0,
) -> Path:
    """Copy EMA weights to ``out_dir/<name>.pt`` and write ``out_dir/<name>.json`` (the card).

    The card records the weights' SHA-256, the architecture arguments, the
    measured receptive radius and the post-processing policy, plus ``fields``.
    """
    from .networks import receptive_radius

    out_dir = Path(out_dir)
    data = Path(weights).read_bytes()
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    width = int(state["stem.weight"].shape[0])
    arch = "v2" if "surv_fine.weight" in state else "v1"
    model = build_generator(arch, width=width)
    model.load_state_dict(state)
    probe = build_generator(arch, width=width)  # radius of the architecture, measured with a non-zero head
    probe.load_state_dict(state)
    torch.nn.init.normal_(probe.head.weight, std=0.05)
    card = {
        "name": name,
        "weights": f"{name}.pt",
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "receptive_radius": receptive_radius(probe, 512),
        "checkpoint_keys": sorted(state.keys()),
    }
    if arch == "v1":
        card |= {
            "architecture": {"width": width},
            "inputs": "image RGB/255-0.5 (B,3,H,W); classic grey residual/4 (B,1,H,W); condition (B,65): "
            "quality/100 and log(luma table)/log(255)",
            "output": "correction dW (B,1,H,W) x4 added to the classic residual",
            "postprocess": {
                "zero_mean_cfa": True,
                "wiener_dft_above_quality": wiener_dft_above_quality,
                "network_at_or_below_quality": network_at_or_below_quality,
            },
        }
    else:
        card |= {
            "architecture": "v2",
            "architecture_args": {"width": width},
            "inputs": "image RGB/255-0.5 (B,3,H,W); compression-aware residual (full frame on the file's 8x8 grid, "
            "inverse-q, cropped, CFA zero-mean, no Wiener)/4 (B,1,H,W); survival map (B,2,H/8,W/8): fraction of "
            "non-zero AC luma coefficients per block, plain and 1/q-weighted; condition (B,65): quality/100 and "
            "log(luma table)/log(255), FiLM on every stage",
            "output": "correction dW (B,1,H,W) x4 added to the compression-aware residual",
            "postprocess": {
                "zero_mean_cfa": True,
                "wiener_surviving_at_or_above": AwareSettings().wiener_above,
                "network_at_or_below_quality": network_at_or_below_quality,
                "network_min_textured_fraction": network_min_textured_fraction,
                "textured_block_std_above": TEXTURED_BLOCK_STD_ABOVE,
            },
        }
    card |= fields or {}
    atomic_write_bytes(out_dir / f"{name}.pt", data)
    atomic_write_json(out_dir / f"{name}.json", card)
    return out_dir / f"{name}.json"
