"""Restoration v2: the network that refines the compression-aware residual, its inputs and its training data."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from spncli.camerasim import (
    ContentPool,
    PrnuPool,
    ReportUnitInTraining,
    check_training_file,
    is_report_unit,
    simulate_v2,
)
from spncli.conditioning import NETWORK_AWARE_SETTINGS, network_inputs, pool_survival
from spncli.degrade import DegradeSettings, encode
from spncli.evidence import decode, load_image
from spncli.geometry import centre_crop
from spncli.jpegdomain import compression_aware_residual, read_luma_coefficients, survival_map
from spncli.networks import COND_DIM, RestorationNetV2, receptive_radius
from spncli.pce import FingerprintSpectrum, score
from spncli.residual import grey_residual
from spncli.restoration import Restorer, load_restorer, write_model_card
from spncli.training import TrainConfig, Trainer, leave_one_unit_out

from .conftest import SHARED

PRAKTICA = SHARED / "praktica-fingerprints"


def _probe(dresden, name="Nikon_D70_0_19445.JPG", size=(200, 264), quality=50):
    """A real photo's centre crop re-compressed in memory (4:2:0, as spn degrade): bytes and evidence."""
    pixels = np.ascontiguousarray(centre_crop(load_image(dresden / "nat-jpg" / name).pixels, size))
    data = encode(pixels, DegradeSettings(quality, "jpeg", "420"))
    return data, decode(data, f"{name}.q{quality}.jpg")


def _random_v2(seed=0, width=16) -> RestorationNetV2:
    """A v2 generator with a non-zero head (untrained weights hallucinate the most)."""
    torch.manual_seed(seed)
    net = RestorationNetV2(width)
    torch.nn.init.normal_(net.head.weight, std=0.05)
    return net.eval()


def test_v2_shapes_and_zero_initial_correction():
    net = RestorationNetV2(16)
    out = net(torch.randn(2, 3, 64, 96), torch.randn(2, 1, 64, 96), torch.rand(2, 2, 8, 12), torch.rand(2, COND_DIM))
    assert out.shape == (2, 1, 64, 96)
    assert float(out.detach().abs().max()) == 0.0  # starts as the compression-aware residual
    with pytest.raises(ValueError, match="1/8"):
        net(torch.randn(1, 3, 64, 64), torch.randn(1, 1, 64, 64), torch.rand(1, 2, 16, 16), torch.rand(1, COND_DIM))


def test_survival_map_aligned_after_crop(dresden):
    """The per-pixel survival of a crop is the file's block map at the crop's offset; pooled, it is exact."""
    pixels = load_image(dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG").pixels[:520, :776]
    data = encode(np.ascontiguousarray(pixels), DegradeSettings(40, "jpeg", "420"))
    ev = decode(data, "probe.jpg")
    coef = read_luma_coefficients(data)
    blocks = survival_map(coef)
    assert blocks.shape == (65, 97, 2) and 0 < blocks[..., 0].mean() < 1
    grey = grey_residual(ev.pixels)
    for crop in ((264, 392), (256, 384)):  # offsets (128, 192) and (132, 196): on and off the 8x8 grid
        residual, surv, info = network_inputs(grey, coef, crop)
        r0, c0 = info["crop_offsets"]
        rows, cols = np.meshgrid(np.arange(crop[0]), np.arange(crop[1]), indexing="ij")
        np.testing.assert_array_equal(surv, blocks[(r0 + rows) // 8, (c0 + cols) // 8])
        expected = compression_aware_residual(grey, coef, crop=crop, settings=NETWORK_AWARE_SETTINGS)[0]
        np.testing.assert_array_equal(residual, expected)
    residual, surv, info = network_inputs(grey, coef, (264, 392))
    assert info["crop_offsets"] == [128, 192]
    np.testing.assert_allclose(pool_survival(surv), blocks[16 : 16 + 33, 24 : 24 + 49].transpose(2, 0, 1))


def test_v2_tiled_equals_whole_image(dresden):
    data, ev = _probe(dresden)
    net = _random_v2()
    card = {"architecture": "v2", "receptive_radius": receptive_radius(net, 256)}
    restorer = Restorer(net, card, "", torch.device("cpu"))
    whole, info = restorer.restore(ev, tile=1024, data=data)
    tiled, _ = restorer.restore(ev, tile=128, data=data)  # 3 x 4 tiles
    assert info["network_applied"] and info["input_residual"] == "compression-aware"
    assert float(np.abs(whole - tiled).max()) <= 1e-4 * float(np.abs(whole).max())
    aware = compression_aware_residual(grey_residual(ev.pixels), read_luma_coefficients(data))[0]
    assert float(np.abs(whole - aware).max()) > 0  # the correction did something


def test_report_units_never_reach_training(dresden):
    assert is_report_unit("Nikon_D70_1_20891.JPG") and not is_report_unit("Nikon_D70_0_19445.JPG")
    assert not is_report_unit("101085.png") and not is_report_unit("praktica_dcz59_0.png")
    with pytest.raises(ReportUnitInTraining, match="_1"):
        check_training_file(dresden / "nat-jpg" / "Nikon_D70s_1_22750.JPG")
    pool = ContentPool([dresden / "nat-jpg"], downscale=4)
    assert pool.files and all(p.stem.rsplit("_", 1)[0].endswith("_0") for p in pool.files)
    assert sorted(p.name for p in pool.excluded) == sorted(p.name for p in (dresden / "nat-jpg").glob("*_1_*"))
    with pytest.raises(ValueError, match="report units"):
        TrainConfig(flatfield_units="_1")
    with pytest.raises(ValueError, match="at least 2"):
        ContentPool([], downscale=1.5)


def test_simulated_v2_pair_matches_inference_inputs():
    """The v2 pair's residual is network_inputs of its own evidence file, at offsets on the 8x8 grid."""
    rng = np.random.default_rng(5)
    scene = rng.uniform(40, 200, (104, 104, 3)).astype(np.float32)
    k = rng.normal(0, 0.01, (104, 104)).astype(np.float32)
    s = simulate_v2(scene, k, rng, quality=40, patch=64)
    assert s.image.shape == (3, 64, 64) and s.residual.shape == s.target.shape == (1, 64, 64)
    assert s.survival.shape == (2, 8, 8) and 0 < float(s.survival.mean()) < 1
    with pytest.raises(ValueError, match="multiple of 8"):
        simulate_v2(scene, k, rng, quality=40, patch=60)


@pytest.mark.skipif(not PRAKTICA.is_dir(), reason=f"Praktica fingerprints not found at {PRAKTICA}")
def test_prnu_free_image_matches_nothing(tmp_path):
    """An image without any sensor noise, restored by a v2 network, matches no real fingerprint."""
    rng = np.random.default_rng(11)
    from spncli.synthetic import dead_leaves

    scene = dead_leaves((256, 256), rng, n=400)
    data = encode(scene, DegradeSettings(30, "jpeg", "420"))
    ev = decode(data, "clean.q30.jpg")
    net = _random_v2(3)
    restorer = Restorer(net, {"architecture": "v2", "receptive_radius": 128}, "", torch.device("cpu"))
    restored, _ = restorer.restore(ev, tile=1024, data=data)
    pces = []
    for png in sorted(PRAKTICA.glob("*.png")):
        k = (cv2.imread(str(png), cv2.IMREAD_GRAYSCALE).astype(np.float32) - 127.5) / 32.5
        pces.append(score(restored, FingerprintSpectrum(np.ascontiguousarray(k[:256, :256]))).pce)
    assert len(pces) == 5 and max(pces) < 20


@pytest.mark.skipif(not PRAKTICA.is_dir(), reason=f"Praktica fingerprints not found at {PRAKTICA}")
def test_v2_training_steps_write_a_loadable_card(tmp_path, dresden):
    """Two v2 steps without the GAN (the ablation) leave the discriminator untouched; the card loads and restores."""
    cfg = TrainConfig(
        architecture="v2", steps=2, batch=2, patch=64, width=8, content=[], prnu=[str(PRAKTICA)],
        adversarial_weight=0.0, device="cpu", checkpoint_every=1,
    )
    trainer = Trainer(cfg, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.d.state_dict().items()}
    trainer.run()
    assert all(torch.equal(before[k], v) for k, v in trainer.d.state_dict().items())
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert not any(is_report_unit(p) for p in log[0]["training_files"])
    card = write_model_card(tmp_path / "run" / "ema.pt", tmp_path / "model", "v2-test")
    meta = json.loads(card.read_text())
    assert meta["architecture"] == "v2" and meta["architecture_args"] == {"width": 8}
    restorer = load_restorer(card, "cpu")
    data, ev = _probe(dresden, size=(128, 160))
    out, info = restorer.restore(ev, data=data)
    assert out.shape == (128, 160) and info["architecture"] == "v2" and info["weights_sha256"] == meta["weights_sha256"]
    assert isinstance(PrnuPool([PRAKTICA]).files, list)


def test_v2_without_coefficients_falls_back_to_classic(dresden):
    """A PNG has no DCT coefficients: the v2 restorer returns the classic residual and says why."""
    photo = load_image(dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG").pixels
    pixels = np.ascontiguousarray(centre_crop(photo, (128, 128)))
    ok, png = cv2.imencode(".png", np.clip(pixels, 0, 255).astype(np.uint8)[:, :, ::-1])
    ev = decode(png.tobytes(), "probe.png")
    restorer = Restorer(_random_v2(), {"architecture": "v2", "receptive_radius": 128}, "", torch.device("cpu"))
    out, info = restorer.restore(ev, quality=50)
    assert out.shape == (128, 128) and not info["network_applied"] and info["input_residual"] == "classic"
    assert "no JPEG DCT coefficients" in info["restoration_skipped"]


def test_leave_one_unit_out_never_chooses_with_the_held_out_unit():
    vals = [
        {"step": 100, "validation": {"per_unit_score": {"A_0": 3.0, "B_0": 1.0, "C_0": 1.0}}},
        {"step": 200, "validation": {"per_unit_score": {"A_0": 1.0, "B_0": 1.2, "C_0": 1.2}}},
    ]
    out = leave_one_unit_out(vals)
    assert out["A_0"] == {"chosen_step": 200, "held_out_score": 1.0}  # B, C prefer 200; A's own 3.0 is not seen
    assert out["B_0"]["chosen_step"] == 100 and out["C_0"]["chosen_step"] == 100


@pytest.mark.skipif(not PRAKTICA.is_dir(), reason=f"Praktica fingerprints not found at {PRAKTICA}")
def test_forked_simulators_give_the_same_pairs(tmp_path, monkeypatch):
    """Pairs are drawn from per-pair seeds: worker processes simulate exactly what the trainer would."""
    kw = dict(architecture="v2", batch=3, patch=64, width=8, content=[], prnu=[str(PRAKTICA)], device="cpu")
    serial = Trainer(TrainConfig(**kw), tmp_path / "a")
    monkeypatch.setattr("spncli.training.os.cpu_count", lambda: 3)  # the cap is the CPU count less one
    forked = Trainer(TrainConfig(**kw, workers=2), tmp_path / "b")
    assert serial.pool is None and forked.pool is not None
    try:
        a, b = serial.batch(), forked.batch()
    finally:
        forked.close()
    for key in ("image", "residual", "target", "survival", "cond"):
        assert torch.equal(a[key], b[key]), key


def test_v2_card_quality_policy_keeps_the_compression_aware_residual_above_it(dresden, tmp_path):
    """A v2 card's ``network_at_or_below_quality``: above it the output is the compression-aware residual itself
    (zero-mean, Wiener by the survival criterion, as `--residual compression-aware` gives), and says so."""
    from spncli.jpegdomain import AwareSettings, coefficients_of

    net = _random_v2()
    weights = tmp_path / "w.pt"
    torch.save(net.state_dict(), weights)
    card_path = write_model_card(weights, tmp_path, "policy", network_at_or_below_quality=40)
    assert json.loads(card_path.read_text())["postprocess"]["network_at_or_below_quality"] == 40
    restorer = load_restorer(card_path, "cpu")
    data, ev = _probe(dresden, quality=50)
    out, info = restorer.restore(ev, tile=1024, data=data)
    assert not info["network_applied"] and info["input_residual"] == "compression-aware" and info["quality_used"] == 50
    aware = compression_aware_residual(grey_residual(ev.pixels), coefficients_of(ev, data), settings=AwareSettings())[0]
    np.testing.assert_allclose(out, aware, rtol=0, atol=1e-5 * float(np.abs(aware).max()))
    data30, ev30 = _probe(dresden, quality=30)
    out30, info30 = restorer.restore(ev30, tile=1024, data=data30)
    assert info30["network_applied"]
    aware30 = compression_aware_residual(grey_residual(ev30.pixels), coefficients_of(ev30, data30))[0]
    assert float(np.abs(out30 - aware30).max()) > 1e-3 * float(np.abs(aware30).max())


def test_textured_fraction_is_the_blocks_ac_spread_by_parseval(dresden):
    """A block's AC standard deviation from its coefficients equals the spread of its dequantized pixels."""
    from spncli.jpegdomain import block_idct

    data, _ = _probe(dresden, quality=70)
    coefficients = read_luma_coefficients(data)
    pixels = block_idct((coefficients.coef * coefficients.qt).astype(np.float64))  # dequantized, level-shifted
    blocks = pixels.reshape(pixels.shape[0] // 8, 8, pixels.shape[1] // 8, 8).std(axis=(1, 3))
    for std in (2.05, 4.1, 8.3):  # 64 std^2 not an integer: the integer energies never sit on the bound
        assert coefficients.textured_fraction(std_above=std) == pytest.approx(float(np.mean(blocks > std)), abs=1e-9)
    region = (64, 40, 128, 200)
    inner = blocks[8:16, 5:25]
    assert coefficients.textured_fraction(region, 4.1) == pytest.approx(float(np.mean(inner > 4.1)), abs=1e-9)


def test_shipped_card_keeps_the_compression_aware_residual_on_flat_content(dresden):
    """The shipped card applies the network to textured photos only: on a real flat-field the output is the
    compression-aware residual itself, with the reason recorded; on a natural photo the network runs."""
    from spncli.jpegdomain import AwareSettings, coefficients_of

    restorer = load_restorer(device="cpu")
    least, std_above = restorer.network_min_textured
    assert least > 0 and std_above > 0
    flat = centre_crop(load_image(dresden / "ff-jpg" / "Nikon_D70_0_19945.JPG").pixels, (256, 256))
    flat = np.ascontiguousarray(flat)
    data = encode(flat, DegradeSettings(50, "jpeg", "420"))
    ev = decode(data, "Nikon_D70_0_19945.q50.jpg")
    out, info = restorer.restore(ev, tile=1024, data=data)
    assert not info["network_applied"] and info["textured_block_fraction"] < least
    assert "flat content" in info["network_skipped"]
    aware = compression_aware_residual(grey_residual(ev.pixels), coefficients_of(ev, data), settings=AwareSettings())[0]
    np.testing.assert_allclose(out, aware, rtol=0, atol=1e-5 * float(np.abs(aware).max()))
    data, ev = _probe(dresden, quality=50)
    _, info = restorer.restore(ev, tile=1024, data=data)
    assert info["network_applied"] and info["textured_block_fraction"] >= least and "network_skipped" not in info


def test_restore_cli_labels_a_file_it_could_not_restore_as_classic(tmp_path, runner, dresden):
    """A CMYK JPEG has no usable luma coefficients: spn restore writes the classic residual and its record, and
    the record's residual_kind, say so (it said "restored", and a later spn match of the .npy believed it)."""
    from PIL import Image

    from spncli.cli import app

    photo = load_image(dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG").pixels
    pixels = np.clip(centre_crop(photo, (96, 128)), 0, 255).astype(np.uint8)
    evidence = tmp_path / "ev" / "cmyk.jpg"
    evidence.parent.mkdir()
    Image.fromarray(pixels).convert("CMYK").save(evidence, quality=80)
    res = runner.invoke(app, ["restore", str(evidence), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert record["residual_kind"] == "classic" and record["restoration"]["restored"] is False
    assert record["kind"].startswith("classic residual, not restored")
