"""Blind grouping by source camera: synthetic cameras (exact recovery) and Dresden flat-fields (six units)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from spncli.cli import app
from spncli.cluster import (
    ClusterSettings,
    agglomerate,
    cluster_fingerprint,
    cluster_images,
    pair_scores,
    prepare,
    z_threshold,
)
from spncli.store import FingerprintStore
from spncli.synthetic import dead_leaves, encode_jpeg, expose, flat_field, synthetic_prnu

from .conftest import camera_of


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory):
    """Five synthetic cameras x four images (flat-fields and dead leaves), 128x192 JPEG Q90, shuffled names."""
    rng = np.random.default_rng(20261127)
    root = tmp_path_factory.mktemp("cluster_evidence")
    truth = {}
    order = rng.permutation(20)
    for cam in range(5):
        k = synthetic_prnu((128, 192), rng, std=0.02)
        for i in range(4):
            scene = flat_field((128, 192), rng) if i % 2 == 0 else dead_leaves((128, 192), rng, n=150)
            name = f"img_{order[cam * 4 + i]:02d}.jpg"
            (root / name).write_bytes(encode_jpeg(expose(scene, k, rng), 90))
            truth[name] = cam
    return root, truth


def _groups(result) -> list[set]:
    return [{Path(p).name for p in c["paths"]} for c in result.clusters]


def test_synthetic_cameras_recovered_exactly(synth_folder):
    root, truth = synth_folder
    result = cluster_images(sorted(root.iterdir()))
    expected = [{n for n, c in truth.items() if c == cam} for cam in range(5)]
    assert sorted(map(sorted, _groups(result))) == sorted(map(sorted, expected))
    assert result.info["analysis_rows"] == result.info["analysis_cols"] == 128  # the smaller side, square
    for c in result.clusters:  # every member is supported by the others above the threshold
        assert min(c["member_z"]) > result.info["z_threshold"]


def test_unrelated_images_stay_alone():
    """Independent residuals (no shared camera): no pair may be merged at alpha 1e-3."""
    rng = np.random.default_rng(7)
    size = (64, 64)
    x = rng.normal(size=(60, size[0] * size[1])).astype(np.float32)
    spectra, _ = prepare(x, size, notch=False)
    g, q = pair_scores(x, spectra, block=16)
    labels, info = agglomerate(g, q, size[0] * size[1], alpha=1e-3)
    assert len(set(labels.tolist())) == 60
    off = info["z"][~np.eye(60, dtype=bool)]
    assert abs(off.mean()) < 0.05 and 0.9 < off.std() < 1.1  # z close to N(0,1) under H0
    assert info["threshold"] == pytest.approx(z_threshold(1e-3, 59**2))


def test_blocks_do_not_change_scores():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(37, 32 * 48)).astype(np.float32)
    spectra, _ = prepare(x, (32, 48))
    g1, q1 = pair_scores(x, spectra, block=5)
    g2, q2 = pair_scores(x, spectra, block=64)
    assert np.allclose(g1, g2, atol=1e-6) and np.allclose(q1, q2, rtol=1e-5)
    assert np.allclose(np.diag(g1), 1.0, atol=1e-5)


def test_two_cameras_never_share_a_cluster():
    """Precision: many weak images of two cameras; whatever is merged is never mixed."""
    rng = np.random.default_rng(11)
    size = (64, 64)
    n = size[0] * size[1]
    ks = rng.normal(size=(2, n)).astype(np.float32)
    cams = np.repeat([0, 1], 30)
    x = (0.06 * ks[cams] + rng.normal(size=(60, n))).astype(np.float32)  # pair z about 0.0036*64 ≈ 0.2: weak
    x[:5] += 0.5 * ks[0]  # a few strong images of camera 0
    spectra, _ = prepare(x, size)
    g, q = pair_scores(x, spectra)
    labels, _ = agglomerate(g, q, n)
    for label in set(labels.tolist()):
        assert len(set(cams[labels == label].tolist())) == 1


def test_dresden_flat_fields_six_groups(dresden, tmp_path, runner):
    flats = sorted((dresden / "ff-jpg").glob("*.JPG"))
    chosen = [p for cam in sorted({camera_of(p) for p in flats}) for p in [q for q in flats if camera_of(q) == cam][:4]]
    db, out, case = tmp_path / "clusters.h5", tmp_path / "clusters.json", tmp_path / "case"
    res = _ok(runner.invoke(app, ["cluster", *map(str, chosen), "--crop", "512", "-f", "json", "--out", str(out),
                                  "--to-db", str(db), "--case", str(case)]))
    record = json.loads(res.stdout)
    assert record == json.loads(out.read_text())
    groups = [{camera_of(Path(p)) for p in c["paths"]} for c in record["clusters"]]
    assert len(groups) == 6 and all(len(g) == 1 for g in groups)
    assert sorted(c["size"] for c in record["clusters"]) == [4] * 6
    assert len(record["similarity_z"]) == 24 and record["images"][0]["sha256"]
    store = FingerprintStore(db)
    assert store.cameras() == [f"cluster-{i:02d}" for i in range(6)]
    meta = store.meta("cluster-00")
    assert meta["image_count"] == 4 and (meta["rows"], meta["cols"]) == (512, 512)
    assert {s["sha256"] for s in meta["sources"]} <= {im["sha256"] for im in record["images"]}
    in_case = json.loads((case / "cluster" / "clusters.json").read_text())
    assert [c["fingerprint_camera"] for c in in_case["clusters"]] == store.cameras()  # provenance both ways
    assert meta["case"] == str(case.absolute()) and meta["cluster"]["id"] == 0
    _ok(runner.invoke(app, ["case", "verify", str(case)]))
    _ok(runner.invoke(app, ["report", str(case)]))
    page = (case / "report.html").read_text()
    assert page.count("images consistent with one source camera</h3>") == 6 and "cluster-05" in page
    assert all(str(p) in page for p in chosen)


def test_cli_help_bad_input_and_evidence_guard(runner, synth_folder, tmp_path):
    root, _ = synth_folder
    out = _ok(runner.invoke(app, ["cluster", "--help"])).output
    assert "--alpha" in out and "--to-db" in out and len(out) > 400
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    res = runner.invoke(app, ["cluster", str(root), str(bad), "-f", "json"])
    assert res.exit_code == 1 and "broken.jpg" in res.output
    assert json.loads(res.stdout.splitlines()[0])["failed"][0]["path"] == str(bad)
    res = runner.invoke(app, ["cluster", str(root), "--out", str(root / "x.json")])
    assert res.exit_code == 2 and "evidence" in res.output and not (root / "x.json").exists()
    res = runner.invoke(app, ["cluster", str(root), "--alpha", "2"])
    assert res.exit_code == 2


def test_portrait_images_are_rotated_for_analysis(tmp_path):
    """Frames saved turned either way (90 or 270 degrees) join their camera; the rotation is recorded."""
    rng = np.random.default_rng(5)
    k = synthetic_prnu((96, 160), rng, std=0.03)
    other = synthetic_prnu((96, 160), rng, std=0.03)
    for i in range(3):
        (tmp_path / f"land_{i}.jpg").write_bytes(encode_jpeg(expose(flat_field((96, 160), rng), k, rng), 95))
    for name, turns in (("cw", 3), ("ccw", 1)):  # the camera's frame saved rotated clockwise / counter-clockwise
        portrait = np.rot90(expose(flat_field((96, 160), rng), k, rng), turns)
        (tmp_path / f"portrait_{name}.jpg").write_bytes(encode_jpeg(np.ascontiguousarray(portrait), 95))
    for i in range(2):  # another camera, portraits only, turned opposite ways
        portrait = np.rot90(expose(flat_field((96, 160), rng), other, rng), 1 + 2 * i)
        (tmp_path / f"other_{i}.jpg").write_bytes(encode_jpeg(np.ascontiguousarray(portrait), 95))
    result = cluster_images(sorted(tmp_path.iterdir()), ClusterSettings(crop=(96, 160)))
    groups = sorted(sorted(Path(p).name for p in c["paths"]) for c in result.clusters)
    assert groups == [["land_0.jpg", "land_1.jpg", "land_2.jpg", "portrait_ccw.jpg", "portrait_cw.jpg"],
                      ["other_0.jpg", "other_1.jpg"]]
    rotations = {Path(im["path"]).name: im["rotation"] for im in result.images}
    assert rotations["portrait_cw.jpg"] == 90 and rotations["portrait_ccw.jpg"] == 270 and rotations["land_0.jpg"] == 0
    assert {rotations["other_0.jpg"], rotations["other_1.jpg"]} == {90, 270}
    assert result.info["n_tests"] == 2 * 6**2  # turned alternatives counted
    main = next(c for c in result.clusters if c["size"] == 5)
    k_hat, meta = cluster_fingerprint(result, main)
    assert k_hat.shape == (96, 160) and meta["image_count"] == 5
    assert np.corrcoef(k_hat.ravel(), k.ravel())[0, 1] > 0.3  # members turned back into one orientation
    assert sorted(src["rotation"] for src in meta["sources"]) == [0, 0, 0, 90, 270]


def test_prepare_normalises_and_matches_numpy_spectra():
    rng = np.random.default_rng(4)
    size = (24, 40)
    x = rng.normal(size=(5, size[0] * size[1])).astype(np.float32) + 3.0
    ref = x - x.mean(1, keepdims=True)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    spectra, notched = prepare(x, size, notch=False)
    assert notched == 1 and np.allclose(x, ref, atol=1e-5)
    full = np.abs(np.fft.fft2(ref.reshape(-1, *size))) ** 2
    assert np.allclose((spectra @ spectra.T), np.einsum("iab,jab->ij", full, full), rtol=1e-4)
    assert np.allclose(full.sum(axis=(1, 2)), size[0] * size[1], rtol=1e-4)  # Parseval: Σ_f P = n


def test_memory_mapped_matrices_give_the_same_result(synth_folder):
    root, _ = synth_folder
    files = sorted(root.iterdir())[:10]
    in_memory = cluster_images(files)
    mapped = cluster_images(files, ClusterSettings(in_memory_bytes=0, block=3))
    assert np.allclose(in_memory.z, mapped.z, atol=1e-4)
    assert [c["members"] for c in in_memory.clusters] == [c["members"] for c in mapped.clusters]


def test_cluster_into_case_verified_tamper_detected_and_reported(synth_folder, runner, tmp_path):
    """``cluster --case``: the clustering and its picture are case files in the audit chain; verify passes, a
    tampered record or input is named; the report shows the matrix, the clusters with full paths and scores."""
    src, truth = synth_folder
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    for p in sorted(src.iterdir()):
        (evidence / p.name).write_bytes(p.read_bytes())
    rng = np.random.default_rng(8)
    stranger = evidence / "stranger.jpg"  # the one image of a sixth camera: it must stay alone
    stranger.write_bytes(encode_jpeg(expose(flat_field((128, 192), rng), synthetic_prnu((128, 192), rng), rng), 90))
    case = tmp_path / "case"
    res = _ok(runner.invoke(app, ["cluster", str(evidence), "--case", str(case), "-f", "json", "--examiner", "E"]))
    record = json.loads(res.stdout)
    assert record["case"] == str(case) and len(record["audit_head"]) == 64
    stored = json.loads((case / "cluster" / "clusters.json").read_text())
    assert stored["clusters"] == record["clusters"] and len(stored["inputs"]) == 21
    picture = cv2.imdecode(np.frombuffer((case / "cluster" / "similarity.png").read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[0] > 300 and picture.shape[1] > picture.shape[0]  # the matrix and its colour bar
    groups = [{truth.get(Path(p).name, "stranger") for p in c["paths"]} for c in stored["clusters"]]
    assert len(groups) == 6 and all(len(g) == 1 for g in groups) and {"stranger"} in groups
    first = stored["clusters"][0]
    assert len(first["pairwise_pce"]) == 6 and all(pce == pytest.approx(z * z, rel=1e-2) for (_, _, z), (_, _, pce)
                                                   in zip(first["pairwise_z"], first["pairwise_pce"], strict=True))
    verify = _ok(runner.invoke(app, ["case", "verify", str(case), "--head", record["audit_head"]]))
    assert "21 input(s) unchanged" in verify.output
    again = runner.invoke(app, ["cluster", str(evidence), "--case", str(case)])
    assert again.exit_code == 2 and "already holds a clustering" in again.output

    _ok(runner.invoke(app, ["report", str(case)]))
    page = (case / "report.html").read_text()
    assert "Blind grouping by source camera (clustering)" in page and "data:image/png;base64," in page
    assert f"z &gt; {stored['z_threshold']:.3f}" in page and "false-alarm probability 0.001" in page
    assert "over 400 possible tests" in page  # (N-1)^2 with N = 21
    assert all(str(evidence / name) in page for name in truth)  # members by full path
    assert page.index("Images not placed") < page.index(str(stranger))
    assert f"<td>{first['pairwise_z'][0][2]:.2f}</td>" in page
    _ok(runner.invoke(app, ["case", "verify", str(case)]))  # the report is recorded too

    text = (case / "cluster" / "clusters.json").read_text()
    (case / "cluster" / "clusters.json").write_text(text.replace('"n_clusters": 6', '"n_clusters": 5'))
    res = runner.invoke(app, ["case", "verify", str(case)])
    assert res.exit_code == 1 and "cluster/clusters.json: changed" in res.output
    (case / "cluster" / "clusters.json").write_text(text)
    name = sorted(truth)[0]
    (evidence / name).write_bytes((evidence / name).read_bytes() + b"\0")
    res = runner.invoke(app, ["case", "verify", str(case)])
    assert res.exit_code == 1 and f"{evidence / name}: changed" in res.output


def test_case_with_clustering_and_matches_reports_both(synth_folder, runner, tmp_path):
    """A case may hold a clustering and match results (either order): it verifies and the report has both."""
    from spncli.casework import run_case
    from spncli.identify import Matcher, MatchSettings

    src, truth = synth_folder
    case, db = tmp_path / "case", tmp_path / "db.h5"
    _ok(runner.invoke(app, ["cluster", str(src), "--case", str(case), "--to-db", str(db)]))
    store = FingerprintStore(db)
    matcher = Matcher((store.load(c) for c in store.cameras()), MatchSettings())
    probes = sorted(src.iterdir())[:3]
    summary = run_case(probes, case, matcher, db=db, db_sha=store.file_sha256(), cluster=False, handle_signals=False)
    assert summary.scored == 3 and summary.consistent == 3  # each probe is a member of one stored cluster
    _ok(runner.invoke(app, ["case", "verify", str(case)]))
    _ok(runner.invoke(app, ["report", str(case)]))
    page = (case / "report.html").read_text()
    assert "All scores" in page and "Blind grouping by source camera (clustering)" in page
    assert page.index("All scores") < page.index("Blind grouping") < page.index("Method and limitations")


def test_killed_cluster_run_is_named_and_run_again(synth_folder, runner, tmp_path):
    """A clustering killed after its start entry: verify names the open run; the same command completes it."""
    from spncli.casefile import Case

    src, _ = synth_folder
    case = Case(tmp_path / "case")
    case.create()
    case.audit("cluster-start", parameters={}, evidence=[str(src)])
    (case.root / "cluster").mkdir()
    (case.root / "cluster" / "clusters.json").write_text("{")  # a file the killed run left
    res = runner.invoke(app, ["case", "verify", str(case.root)])
    assert res.exit_code == 1 and "no end entry" in res.output and "cluster-start" in res.output
    _ok(runner.invoke(app, ["cluster", str(src), "--case", str(case.root)]))
    _ok(runner.invoke(app, ["case", "verify", str(case.root)]))
    assert json.loads((case.root / "cluster" / "clusters.json").read_text())["n_images"] == 20


def test_failed_clustering_is_audited_and_the_case_still_verifies(synth_folder, runner, tmp_path):
    """Two image files, one unreadable: fewer than two usable images fails the run (exit 1), audited; one image
    file alone is refused before the case is touched (exit 2)."""
    src, _ = synth_folder
    case = tmp_path / "case"
    broken = tmp_path / "ev" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    alone = runner.invoke(app, ["cluster", str(sorted(src.iterdir())[0]), "--case", str(case)])
    assert alone.exit_code == 2 and "at least two images" in alone.output and not case.exists()
    res = runner.invoke(app, ["cluster", str(sorted(src.iterdir())[0]), str(broken), "--case", str(case)])
    assert res.exit_code == 1 and "at least two usable images" in res.output
    events = [json.loads(line)["event"] for line in (case / "audit.jsonl").read_text().splitlines()]
    assert events == ["cluster-start", "cluster-failed"] and not (case / "cluster").exists()
    _ok(runner.invoke(app, ["case", "verify", str(case)]))


def test_cluster_fingerprints_are_leak_screened_and_a_run_killed_after_storing_them_runs_again(
    synth_folder, runner, tmp_path, monkeypatch
):
    """--to-db fingerprints get the leak screen of spn fingerprint; a run killed after storing them (before the
    case recorded them) is simply made again: this case's fingerprints of the same members are kept, another
    case's clustering into the same database is still refused."""
    src, _ = synth_folder
    db, case = tmp_path / "db" / "c.h5", tmp_path / "case"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for SIGKILL between storing the fingerprints and writing the case files

    monkeypatch.setattr("spncli.cli.cluster.cluster_files", killed)
    runner.invoke(app, ["cluster", str(src), "--case", str(case), "--to-db", str(db)])
    monkeypatch.undo()
    store = FingerprintStore(db)
    stored = {c: store.header(c)[0] for c in store.cameras()}
    assert len(stored) == 5 and not (case / "cluster").exists()
    screens = [store.meta(c)["leak_screen"] for c in sorted(stored)]
    assert [len(s["compared"]) for s in screens] == [0, 1, 2, 3, 4]
    assert all(not e["flagged"] for s in screens for e in s["compared"])  # five different cameras
    res = _ok(runner.invoke(app, ["cluster", str(src), "--case", str(case), "--to-db", str(db)]))
    assert res.stderr.count("kept cluster-") == 5
    record = json.loads((case / "cluster" / "clusters.json").read_text())
    assert {c["fingerprint_camera"]: c["fingerprint_sha256"] for c in record["clusters"]} == stored
    _ok(runner.invoke(app, ["case", "verify", str(case)]))
    res = runner.invoke(app, ["cluster", str(src), "--case", str(tmp_path / "other"), "--to-db", str(db)])
    assert res.exit_code == 1 and "exists already" in res.output


def test_files_that_are_not_images_are_counted_not_skipped_silently(synth_folder, runner, tmp_path):
    """cluster, match --pool and calibrate say how many files of the walked folders are not images."""
    src, _ = synth_folder
    folder = tmp_path / "seized"
    folder.mkdir()
    for p in sorted(src.iterdir())[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / "array.npy").write_bytes(b"\x93NUMPY")
    db = tmp_path / "db.h5"
    FingerprintStore(db).add("cam", np.full((128, 192), 1e-3, np.float32), {})
    line = "2 file(s) in the folders are not images (no image name or signature): not read"
    for args in (["cluster", str(folder)], ["match", "--pool", str(folder), "--db", str(db)],
                 ["calibrate", "--db", str(db), str(folder), "--qualities", "none"]):  # fmt: skip
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and line in res.stderr, (args, res.output)


def test_a_copy_of_an_image_is_used_once_in_a_cluster_and_a_pool(synth_folder, runner, tmp_path):
    """Two files of the same bytes, or of the same decoded pixels in other bytes, group on their content, not on
    the sensor, and are one observation of it: the copy is named (error line, exit 1) and not used."""
    src, _ = synth_folder
    first = sorted(src.iterdir())[0]
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(first.read_bytes())
    other = sorted(src.iterdir())[1]
    res = runner.invoke(app, ["cluster", str(first), str(copy), str(other), "-f", "json"])
    assert res.exit_code == 1 and f"error: {copy}: same bytes as {first}" in res.stderr, res.output
    record = json.loads(res.stdout)
    assert record["n_images"] == 2 and [f["path"] for f in record["failed"]] == [str(copy)]
    db = tmp_path / "db.h5"
    FingerprintStore(db).add("cam", np.full((128, 192), 1e-3, np.float32), {})
    res = runner.invoke(app, ["match", "--pool", str(first), str(copy), "--db", str(db), "-f", "json"])
    assert res.exit_code == 1 and f"error: {copy}: same bytes as {first}" in res.stderr, res.output
    assert json.loads(res.stdout.splitlines()[0])["n_images"] == 1
    wrapped = tmp_path / "wrapped.jpg"  # other bytes, the same photograph: bytes after the end-of-image marker
    wrapped.write_bytes(first.read_bytes() + b"\x00appended")
    res = runner.invoke(app, ["cluster", str(first), str(wrapped), str(other), "-f", "json"])
    assert res.exit_code == 1 and f"error: {wrapped}: same decoded pixels as {first}" in res.stderr, res.output
    assert json.loads(res.stdout)["n_images"] == 2


def test_uniform_images_are_refused_not_clustered(synth_folder, runner, tmp_path):
    """Uniform images (grey, clipped white) hold no sensor noise; their residuals pair on the codec's rounding
    (z 41.6 between a grey and a white JPEG) and inflated the null scale until real same-camera pairs fell to
    z 1: each is refused one line (exit 1) and the real images cluster as without them. Fewer than two image
    files is a usage error (exit 2)."""
    src, _ = synth_folder
    real = sorted(src.iterdir())
    blanks = []
    for name, value in (("grey.jpg", 128), ("white.jpg", 255), ("black.png", 0)):
        blank = tmp_path / name
        blank.write_bytes(encode_jpeg(np.full((128, 192, 3), value, np.uint8), 95) if name.endswith(".jpg")
                          else cv2.imencode(".png", np.zeros((128, 192, 3), np.uint8))[1].tobytes())  # fmt: skip
        blanks.append(blank)
    plain = json.loads(runner.invoke(app, ["cluster", *map(str, real), "-f", "json"]).stdout)
    res = runner.invoke(app, ["cluster", *map(str, real + blanks), "-f", "json"])
    assert res.exit_code == 1 and all(f"error: {b}: uniform" in res.stderr for b in blanks), res.output
    record = json.loads(res.stdout)
    assert record["n_images"] == len(real) and [c["size"] for c in record["clusters"]] == \
        [c["size"] for c in plain["clusters"]]  # fmt: skip
    one = runner.invoke(app, ["cluster", str(real[0])])
    assert one.exit_code == 2 and "at least two images" in one.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["cluster", str(empty)]).exit_code == 2


def test_bridge_scores_equal_the_direct_consensus_z():
    """_bridges updates the consensus sums one member at a time: equal to the consensus-to-consensus z computed
    afresh on each pair of reduced groups; NaN where the image's own side would keep fewer than two members."""
    from spncli.cluster import _bridges

    rng = np.random.default_rng(3)
    k, n = 7, 4096
    x = rng.standard_normal((k, n))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    g = x @ x.T
    r = g * 0.5
    q = n * (2 + rng.random((k, k)))  # pair energies: positive, of the order of n
    q = q + q.T
    turned = np.array([False, True, False, False, True, False, False])
    first, second = [0, 2, 5], [1, 3, 4, 6]

    def direct(a, b):
        def sub(u, v):
            same = turned[u][:, None] == turned[v][None, :]
            return np.where(same, g[np.ix_(u, v)], r[np.ix_(u, v)])

        ca, cb = sub(a, a).sum() - len(a), sub(b, b).sum() - len(b)
        energy = q[np.ix_(a, b)].sum() + n * (cb * len(a) + ca * len(b) + ca * cb)
        return sub(a, b).sum() * n / np.sqrt(energy) / 1.7

    got = _bridges(first, second, g, r, q, turned, n, 1.7)
    for i, m in enumerate(first + second):
        a, b = [j for j in first if j != m], [j for j in second if j != m]
        if len(a if m in first else b) < 2:
            assert np.isnan(got[i])
        else:
            assert got[i] == pytest.approx(direct(np.array(a), np.array(b)), rel=1e-9)


def test_a_composite_of_two_cameras_does_not_join_them(tmp_path, monkeypatch):
    """Three flat-fields of each of two synthetic cameras and one image whose left half is the first camera's
    and right half the second's: the composite holds both patterns and every member stays above the threshold
    against the rest, so without the bridge check the two cameras form one cluster; with it, two."""
    from spncli import cluster as cl

    rng = np.random.default_rng(11)
    shape = (128, 192)
    k1, k2 = synthetic_prnu(shape, rng, std=0.02), synthetic_prnu(shape, rng, std=0.02)
    paths = []
    for name, k in [(f"a{i}", k1) for i in range(3)] + [(f"b{i}", k2) for i in range(3)]:
        paths.append(tmp_path / f"{name}.jpg")
        paths[-1].write_bytes(encode_jpeg(expose(flat_field(shape, rng), k, rng), 95))
    composite = np.concatenate([k1[:, :96], k2[:, 96:]], axis=1)
    paths.append(tmp_path / "composite.jpg")
    paths[-1].write_bytes(encode_jpeg(expose(flat_field(shape, rng), composite, rng), 95))

    def groups(result):
        return sorted(sorted(Path(result.images[m]["path"]).stem for m in c["members"]) for c in result.clusters)

    checked = cl.cluster_images(paths)
    assert all(not ({"a0", "b0"} <= set(g)) for g in groups(checked))  # the cameras stay apart
    lone = cl.cluster_images([*paths[:4], paths[-1]])  # three of one camera, one of the other: still apart
    assert all(not ({"a0", "b0"} <= set(g)) for g in groups(lone)), groups(lone)
    assert any("links the two groups" in m.get("reason", "") for m in checked.info["merges"])
    monkeypatch.setattr(cl, "_bridges", lambda first, second, *a: np.full(len(first) + len(second), np.nan))
    unchecked = cl.cluster_images(paths)
    assert any({"a0", "b0", "composite"} <= set(g) for g in groups(unchecked))  # what the check prevents
