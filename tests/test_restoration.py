"""Degradation, the restoration networks, tiling, weights loading, training and the restore/eval CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spncli.cli import app
from spncli.evidence import load_image
from spncli.networks import COND_DIM, NoiseDiscriminator, RestorationNet, receptive_radius
from spncli.restoration import DEFAULT_MODEL, ModelError, Restorer, load_restorer, tile_slices

from .test_cli import _ok, _snapshot


def test_degrade_names_manifest_and_qualities(runner, synth_case, tmp_path):
    src = synth_case["probes"]["CAM-A"][0]
    before = _snapshot(src.parent)
    out = tmp_path / "deg"
    _ok(runner.invoke(app, ["degrade", str(src), "--out", str(out), "-q", "70", "-q", "30", "--subsampling", "444"]))
    _ok(runner.invoke(app, ["degrade", str(src), "--out", str(tmp_path / "webp"), "-q", "60", "--codec", "webp"]))
    manifest = json.loads((out / "manifest.json").read_text())
    sha = load_image(src).sha256
    assert {f["output"] for f in manifest["files"]} == {
        f"{src.stem}-{sha[:8]}.q70.444.jpg",
        f"{src.stem}-{sha[:8]}.q30.444.jpg",
    }
    for f in manifest["files"]:
        ev = load_image(out / f["output"])
        assert f["source_sha256"] == sha and f["output_sha256"] == ev.sha256
        assert ev.quality.exact and ev.quality.quality == f["quality"] and f["subsampling"] == "444"
        assert {(c.h_sampling, c.v_sampling) for c in ev.jpeg.components} == {(1, 1)}
    webp = next((tmp_path / "webp").glob("*.webp"))
    assert load_image(webp).format == "webp" and webp.name.endswith(".q60.webp")
    res = runner.invoke(app, ["degrade", str(src), "--out", str(src.parent / "x")])
    assert res.exit_code == 2 and "inside the evidence" in res.stderr
    res = runner.invoke(app, ["degrade", str(src), "--out", str(tmp_path / "y"), "--codec", "gif"])
    assert res.exit_code == 2 and "jpeg, webp" in res.stderr
    assert _snapshot(src.parent) == before


def test_quality_list_syntax(synth_case, tmp_path):
    import subprocess
    import sys

    from spncli.cli import expand_list_options

    assert expand_list_options(["degrade", "a.jpg", "--quality", "90", "70", "./50", "--out", "o"]) == [
        "degrade",
        "a.jpg",
        "--quality",
        "90",
        "--quality",
        "70",
        "./50",
        "--out",
        "o",
    ]
    assert expand_list_options(["match", "--quality", "90", "70"]) == ["match", "--quality", "90", "70"]
    src = synth_case["probes"]["CAM-B"][0]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "spncli",
            "degrade",
            str(src),
            "--quality",
            "90",
            "70",
            "50",
            "30",
            "--out",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert sorted(p.name.split(".")[1] for p in (tmp_path / "d").glob("*.jpg")) == ["q30", "q50", "q70", "q90"]


def test_tiles_cover_and_stay_aligned():
    for length, tile, overlap in [(1000, 256, 64), (4000, 1024, 128), (200, 256, 64), (1040, 512, 128)]:
        sl = tile_slices(length, tile, overlap)
        covered = np.zeros(length, bool)
        for a, b in sl:
            assert a % 16 == 0 and b - a <= tile
            covered[a:b] = True
        assert covered.all() and sl[-1][1] == length


def test_every_parameter_learns_and_nothing_is_nan():
    torch.manual_seed(0)
    g, d = RestorationNet(width=8), NoiseDiscriminator(width=8)
    torch.nn.init.normal_(g.head.weight, std=0.05)
    x, r, c = torch.rand(2, 3, 64, 64) - 0.5, torch.randn(2, 1, 64, 64), torch.rand(2, COND_DIM)
    out = g(x, r, c)
    logits, q = d(out)
    (out.square().mean() + logits.mean() + q.mean()).backward()
    for name, p in [*g.named_parameters(), *d.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert out.shape == (2, 1, 64, 64) and torch.isfinite(out).all()
    assert torch.count_nonzero(torch.stack([p.grad.abs().sum() for _, p in g.named_parameters()])) > 0
    # the untrained generator returns no correction: it starts as the classic residual
    assert RestorationNet(width=8)(x, r, c).abs().max() == 0


def test_tiled_equals_whole_image():
    torch.manual_seed(1)
    model = RestorationNet(width=8).eval()
    torch.nn.init.normal_(model.head.weight, std=0.05)
    radius = receptive_radius(model, 384)
    restorer = Restorer(model, {"receptive_radius": radius}, "", torch.device("cpu"))
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (330, 460, 3)).astype(np.float32)
    res = rng.standard_normal((330, 460)).astype(np.float32)
    cond = rng.uniform(0, 1, COND_DIM).astype(np.float32)
    whole = restorer.correction(pixels, res, cond, tile=4096)
    tiled = restorer.correction(pixels, res, cond, tile=128)
    assert np.abs(whole).max() > 0.1
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_weights_checksum_is_enforced(tmp_path):
    card = json.loads(DEFAULT_MODEL.read_text())
    (tmp_path / card["weights"]).write_bytes((DEFAULT_MODEL.parent / card["weights"]).read_bytes() + b"x")
    (tmp_path / DEFAULT_MODEL.name).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="does not match"):
        load_restorer(tmp_path / DEFAULT_MODEL.name, "cpu")
    with pytest.raises(ModelError, match="cannot read"):
        load_restorer(tmp_path / "absent.json", "cpu")


def test_shipped_model_card_is_complete():
    card = json.loads(DEFAULT_MODEL.read_text())
    weights = DEFAULT_MODEL.parent / card["weights"]
    assert weights.stat().st_size <= 20 * 1024 * 1024
    for key in ("parameters", "receptive_radius", "training", "evaluation", "command", "checkpoint_keys"):
        assert key in card, key
    r = load_restorer(DEFAULT_MODEL, "cpu")
    assert sum(p.numel() for p in r.model.parameters()) == card["parameters"]


def test_restore_and_match_restore_cli(runner, synth_case, tmp_path):
    probe = synth_case["probes"]["CAM-A"][0]
    out = tmp_path / "restored"
    _ok(runner.invoke(app, ["restore", str(probe), "--out", str(out), "--device", "cpu", "--preview"]))
    meta = json.loads(next(out.glob("*.json")).read_text())
    w = np.load(out / meta["files"]["array"], allow_pickle=False)
    assert w.shape == (256, 384) and w.dtype == np.float32 and np.isfinite(w).all()
    assert meta["restoration"]["quality_used"] == 92 and meta["restoration"]["weights_sha256"]
    assert meta["input"]["sha256"] == load_image(probe).sha256
    db = tmp_path / "db.h5"
    for cam, folder in synth_case["flats"].items():
        _ok(runner.invoke(app, ["fingerprint", str(folder), "-c", cam, "--db", str(db)]))
    rows = [
        json.loads(x)
        for x in _ok(
            runner.invoke(
                app, ["match", str(synth_case["root"] / "probes"), "--db", str(db), "--restore", "-f", "json"]
            )
        ).stdout.splitlines()
    ]
    assert len(rows) == 8 and all(r["restored"] for r in rows)
    for r in rows:
        assert (r["pce"] > 60) == Path(r["image"]).name.startswith(r["camera"]), r
        assert r["pce"] == max(r["pce_classic"], r["pce_restored"]) and r["weights_sha256"] and r["residual_kind"]
        assert isinstance(r["network_applied"], bool) and r["decision_classic"] in ("consistent", "not consistent")
        assert r["network_applied"] != ("network_skipped" in r), r  # why, when not
        assert "14.99%" in r["restoration_policy"]  # what the card applied, recorded with the score
        assert r["decision"] == "consistent" or r["decision_classic"] == "not consistent"  # never loses this match
    res = runner.invoke(app, ["restore", str(probe), "--out", str(tmp_path / "x"), "--device", "tpu"])
    assert res.exit_code == 2 and "auto, cpu, cuda" in res.stderr


def test_eval_cli(runner, synth_case, tmp_path):
    db = tmp_path / "db.h5"
    for cam, folder in synth_case["flats"].items():
        _ok(runner.invoke(app, ["fingerprint", str(folder), "-c", cam, "--db", str(db)]))
    deg = tmp_path / "deg"
    _ok(runner.invoke(app, ["degrade", str(synth_case["root"] / "probes"), "--out", str(deg), "-q", "90", "-q", "50"]))
    out = tmp_path / "eval"
    res = _ok(
        runner.invoke(
            app,
            ["eval", str(deg), "--db", str(db), "--crop", "192", "--out", str(out), "-f", "json", "--device", "cpu"]
            + ["--aware"],
        )
    )
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert [r["quality"] for r in rows] == ["q90", "q50"]
    assert all(r["matching_pairs"] == 4 and r["non_matching_pairs"] == 4 for r in rows)
    assert rows[0]["classic_tpr"] == 1.0 and rows[0]["restored_tpr"] is not None
    assert rows[0]["aware_tpr"] == 1.0 and rows[0]["aware_fp"] == 0 and rows[0]["classic_nowiener_median"] > 60
    record = json.loads((out / "eval.json").read_text())
    pairs = record["pairs"]
    assert {p["aware_kind"] for p in pairs} == {"compression-aware"}
    # every probe's SHA-256 is recorded (the pairs depend on it), and nothing failed
    assert {i["path"] for i in record["inputs"]} == {p["image"] for p in pairs} and record["failed"] == []
    assert all(i["sha256"] == hashlib.sha256(Path(i["path"]).read_bytes()).hexdigest() for i in record["inputs"])
    assert (out / "eval.png").stat().st_size > 1000 and json.loads((out / "eval.json").read_text())["weights_sha256"]


def test_train_smoke_and_resume(runner, tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        "seed = 3\nsteps = 2\nbatch = 2\npatch = 48\nwidth = 8\ncheckpoint_every = 1\nval_every = 100\n"
        'content = []\nprnu = ""\nthreads = 1\n'
    )
    out = tmp_path / "run"
    _ok(runner.invoke(app, ["train", "--config", str(cfg), "--out", str(out)]))
    _ok(runner.invoke(app, ["train", "--config", str(cfg), "--out", str(out), "--steps", "3"]))
    steps = [json.loads(x).get("step") for x in (out / "log.jsonl").read_text().splitlines()]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 3 and (out / "ema.pt").exists()
    assert None in steps  # the config record
    cfg.write_text("learning_rate = 1\n")
    res = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 2 and "unknown keys" in res.stderr and "allowed" in res.stderr


def test_no_hallucinated_evidence():
    """Restored residuals of different cameras and of PRNU-free images share no pattern,
    and contain none of the PRNU patterns the network was trained with."""
    import cv2

    from spncli.evidence import decode
    from spncli.pce import FingerprintSpectrum, score
    from spncli.synthetic import dead_leaves, encode_jpeg, expose, synthetic_prnu

    from .conftest import SHARED

    restorer = load_restorer(DEFAULT_MODEL, "cpu")
    rng = np.random.default_rng(99)
    shape = (512, 512)
    images = {
        "camera-1": expose(dead_leaves(shape, rng), synthetic_prnu(shape, rng), rng),
        "camera-2": expose(dead_leaves(shape, rng), synthetic_prnu(shape, rng), rng),
        "clean-1": expose(dead_leaves(shape, rng), np.zeros(shape, np.float32), rng),
        "clean-2": expose(dead_leaves(shape, rng), np.zeros(shape, np.float32), rng),
    }
    restored = {}
    for name, img in images.items():
        for q in (70, 30):
            data = encode_jpeg(img, q)
            ev = decode(data, f"{name}.q{q}.jpg")
            restored[(name, q)], info = restorer.restore(ev, data=data)
            assert info["network_applied"]  # the shipped network at work, not only its input residual
    keys = list(restored)
    worst = 0.0
    for i, a in enumerate(keys):
        spec = FingerprintSpectrum(restored[a])
        for b in keys[i + 1 :]:
            if a[0] == b[0]:
                continue  # the same scene at two qualities legitimately correlates
            worst = max(worst, score(restored[b], spec).pce)
    assert worst < 30, worst
    praktica = sorted((SHARED / "praktica-fingerprints").glob("*.png"))
    for path in praktica:
        k = (cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) - 127.5) / 32.5
        spec = FingerprintSpectrum(k)
        for key in [("clean-1", 30), ("camera-1", 30)]:
            for turn in range(4):
                s = score(np.ascontiguousarray(np.rot90(restored[key], turn)), spec, max_shift=4000)
                assert s.pce < 60 and s.p_fa > 1e-6, (path.name, key, turn, s.pce)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine (CI has none)")
def test_cuda_mixed_precision_agrees_with_fp32():
    from spncli.evidence import decode
    from spncli.synthetic import dead_leaves, encode_jpeg, expose, synthetic_prnu

    rng = np.random.default_rng(3)
    img = expose(dead_leaves((1024, 1536), rng), synthetic_prnu((1024, 1536), rng), rng)
    ev = decode(encode_jpeg(img, 50), "gpu.jpg")
    r = load_restorer(DEFAULT_MODEL, "cuda")
    outs = {p: r.restore(ev, precision=p, tile=512)[0] for p in ("fp32", "fp16", "bf16")}
    for p in ("fp16", "bf16"):
        assert np.corrcoef(outs[p].ravel(), outs["fp32"].ravel())[0, 1] > 0.999, p


def test_quality_policy_of_the_v1_card(synth_case):
    """v1 (kept for cases that recorded it): above the card's network quality the restored residual is the
    classic one (Wiener above 80)."""
    from spncli.evidence import decode
    from spncli.residual import extract_residual, grey_residual, zero_mean_cfa
    from spncli.synthetic import encode_jpeg

    r = load_restorer(DEFAULT_MODEL.parent / "spn-restore-v1.json", "cpu")
    assert r.architecture == "v1"
    policy = r.card["postprocess"]
    img = load_image(synth_case["probes"]["CAM-B"][0]).pixels
    hi = decode(encode_jpeg(img.astype(np.uint8), 90), "hi.jpg")
    out, info = r.restore(hi)
    assert not info["network_applied"] and info["wiener_dft"]
    np.testing.assert_allclose(out, extract_residual(hi.pixels), atol=1e-5)
    q = policy["network_at_or_below_quality"]
    lo = decode(encode_jpeg(img.astype(np.uint8), q), "lo.jpg")
    out, info = r.restore(lo)
    assert info["network_applied"] and not info["wiener_dft"] and info["quality_used"] == q
    assert np.abs(out - zero_mean_cfa(grey_residual(lo.pixels))).max() > 1e-3  # the network changed something


def test_two_residual_decision_is_bonferroni_and_keeps_classic_matches():
    from spncli.identify import two_test_decision
    from spncli.pce import MatchScore, false_alarm_probability

    def ms(pce):
        return MatchScore(pce, 0.0, (0, 0), (0, 0), 1, false_alarm_probability(pce, 1), 0)

    d = two_test_decision(ms(68.0), ms(42.2), 60.0)  # Nikon_D70_1_20891 at Q30, full frame (issue 7)
    assert d["decision"] == "consistent" and d["decided_by"] == "classic" and d["residuals_disagree"]
    d = two_test_decision(ms(10.0), ms(100.0), 60.0)
    assert d["decision"] == "consistent" and d["decided_by"] == "restored" and d["decision_classic"] == "not consistent"
    assert two_test_decision(ms(59.0), ms(59.0), 60.0)["decision"] == "not consistent"
    for a in np.linspace(-20, 200, 111):
        for b in np.linspace(-20, 200, 111):
            d = two_test_decision(ms(a), ms(b), 60.0)
            assert (d["decision"] == "consistent") == (a > 60 or b > 60)
            if a > 60:  # a classic match is never lost
                assert d["decision"] == "consistent"
            # the reported false alarm is that of two tests (Bonferroni), never below either single test's
            assert d["p_fa"] == min(1.0, 2 * min(ms(a).p_fa, ms(b).p_fa)) >= min(ms(a).p_fa, ms(b).p_fa)


def test_restore_never_assumes_a_quality_for_files_without_tables(runner, synth_case, tmp_path):
    """A PNG has no quantization tables: restore says so (one line, exit 1) unless --quality is given."""
    import cv2

    probe = synth_case["probes"]["CAM-A"][0]
    png = tmp_path / "ev" / "probe.png"
    png.parent.mkdir()
    png.write_bytes(cv2.imencode(".png", load_image(probe).pixels[:, :, ::-1].astype(np.uint8))[1].tobytes())
    res = runner.invoke(app, ["restore", str(png), "--out", str(tmp_path / "a"), "--device", "cpu"])
    assert res.exit_code == 1 and "no JPEG quantization tables" in res.stderr and "--quality" in res.stderr
    assert res.stderr.count("error:") == 1 and not list((tmp_path / "a").rglob("*.npy"))
    _ok(runner.invoke(app, ["restore", str(png), "--out", str(tmp_path / "b"), "--device", "cpu", "--quality", "50"]))
    meta = json.loads(next((tmp_path / "b").rglob("*.json")).read_text())
    assert meta["restoration"]["quality_used"] == 50
    db = tmp_path / "db.h5"
    _ok(runner.invoke(app, ["fingerprint", str(synth_case["flats"]["CAM-A"]), "-c", "CAM-A", "--db", str(db)]))
    res = _ok(runner.invoke(app, ["match", str(png), "--db", str(db), "--restore", "-f", "json"]))
    (row,) = [json.loads(x) for x in res.stdout.splitlines()]
    assert row["restored"] is False and "no JPEG quantization tables" in row["restoration_skipped"]
    assert row["decision"] == "consistent"  # scored with the classic residual
    assert row["pce_classic"] == row["pce"] and row["pce_restored"] is None and row["decided_by"] == "classic"
    assert row["network_applied"] is False and len(row["weights_sha256"]) == 64  # every --restore row says so


def test_inference_never_imports_training_code():
    """Inference imports neither the trainer nor the training-pair simulator; no script imports the CLI."""
    import subprocess
    import sys

    code = "import sys, spncli.restoration; print(sorted(m for m in sys.modules if m.startswith('spncli.')))"
    mods = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "spncli.restoration" in mods and "spncli.training" not in mods and "spncli.camerasim" not in mods, mods
    root = Path(__file__).resolve().parents[1]
    assert "spncli.cli" not in (root / "models" / "build_card.py").read_text()


def test_card_tables_come_from_eval_outputs(tmp_path):
    """models/build_card.py --tables-only: four rows per table, re-summarised per split from spn eval pairs."""
    import importlib.util
    import json

    from spncli.evaluation import PairScore, summarize

    spec = importlib.util.spec_from_file_location("build_card", Path(__file__).parents[1] / "models" / "build_card.py")
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)
    pairs = []
    for unit, pce in (("CAM_0", 80.0), ("CAM_1", 20.0)):
        for cam in ("CAM_0", "CAM_1"):
            own = cam == unit
            pairs.append(PairScore(f"{unit}.q30.jpg", "q30", unit, cam, pce if own else 1.0, pce + 5 if own else 2.0,
                                   pce - 5 if own else 0.5, pce * 2 if own else 3.0, "compression-aware"))  # fmt: skip
    ev = {"rows": summarize(pairs, 60.0, lambda c: c.endswith("_1")), "pairs": [p.__dict__ for p in pairs],
          "settings": {"units": "_1"}, "db_sha256": "d" * 64}  # fmt: skip
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(ev))
    tables = card.labelled_tables([f"selection _0={path}#_0", f"report _1={path}"])
    md = "\n".join(card.tables_markdown(tables, ["spn eval PROBES --db DB --aware --out X"]))
    assert "| classic | 80.0 / 1.00 / 0 |" in md and "| compression-aware | 160.0 / 1.00 / 0 |" in md  # _0
    assert "| classic | 20.0 / 0.00 / 0 |" in md and "| restored | 25.0 / 0.00 / 0 |" in md  # _1, as spn eval wrote
    assert md.count("| classic, no Wiener |") == 2 and "    spn eval PROBES" in md
    with pytest.raises(SystemExit, match="LABEL=EVAL_JSON"):
        card.labelled_tables([str(path)])


def test_card_text_of_a_v2_run_names_its_split_data_and_policy():
    """build_card's words for a v2 run come from the run's config and card, not from v1's texts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_card", Path(__file__).parents[1] / "models" / "build_card.py")
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)
    from spncli.training import TrainConfig

    config = TrainConfig(architecture="v2", quality_end=(20, 95), flatfield_exclude_centre=1024).as_dict()
    data = card.training_data(config)
    assert "simulate_v2" in data and "_1 unit" in data and "dead leaves" not in data
    assert "Q70-95 to Q20-95" in data and "flat-fields outside their centre 1024x1024" in data
    assert "_0 units" in card.selection_text(config, "best") and "_1 units chose nothing" in card.selection_text(
        config, "best")
    policy = card.policy_text({"architecture": "v2", "postprocess": {"wiener_surviving_at_or_above": 0.1499,
                                                                     "network_at_or_below_quality": 40}})
    assert "14.99%" in policy and "at or below quality 40" in policy
    row = {"unit": "Nikon_D70_0", "quality": 30, "classic_median": 17.7, "aware_median": 14.7, "restored_median": 21.4}
    lines = card.validation_lines([{"step": 750, "score": 1.2, "rows": [row]}])
    assert lines == ["- step 750 (score 1.200): Nikon_D70_0 Q30 classic 17.7 / aware 14.7 -> 21.4"]


def test_report_method_names_the_shipped_network_and_lists_disagreements():
    """A case scored with --restore: the report's method names the network, its training data and how its
    weights were chosen (from the card of the recorded weights), and lists the pairs whose residuals disagree."""
    import json

    from spncli.modelcards import DEFAULT_CARD, find_card
    from spncli.report import _restoration_method

    sha = json.loads(DEFAULT_CARD.read_text())["weights_sha256"]
    assert find_card(sha)["name"] == "spn-restore-v2" and find_card("0" * 64) is None
    rows = [
        {"image": "/ev/a.jpg", "camera": "CAM", "pce_classic": 73.5, "pce_restored": 54.8, "residuals_disagree": True},
        {"image": "/ev/b.jpg", "camera": "CAM", "pce_classic": 80.0, "pce_restored": 90.0, "residuals_disagree": False},
    ]
    html = _restoration_method(sha, rows, 60.0)
    assert "spn-restore-v2" in html and "simulate_v2" in html and "_0 units" in html
    assert "not recorded with these scores" in html and "1.00% of their 8x8 blocks textured" in html
    policy = "the spectral Wiener filter above quality 80"
    recorded = _restoration_method(sha, [r | {"restoration_policy": policy} for r in rows], 60.0)
    assert f"Applied: {policy} (as recorded with the scores)" in recorded and "textured" not in recorded
    assert "a.jpg" in html and "b.jpg" not in html and "73.5" in html and "1 image-camera" in html
    unknown = _restoration_method("f" * 64, rows[1:], 60.0)
    assert "no model card of these weights" in unknown and "agreed on every image-camera pair" in unknown
