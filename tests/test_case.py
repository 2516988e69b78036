"""Investigator workflow: parallel resumable batch, case folder, audit trail, verify, report, robustness."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from spncli.cli.report import CHROMIUM_FLAGS
from spncli.synthetic import dead_leaves, encode_jpeg, expose

from .test_casework import same_results
from .test_cli import _snapshot, unprivileged

SPN = [sys.executable, "-m", "spncli"]


def _spn(*args, check_rc=0, privileged=True, timeout=300):
    cmd = [*SPN, *map(str, args)]
    res = subprocess.run(cmd if privileged else unprivileged(cmd), capture_output=True, text=True, timeout=timeout)
    if check_rc is not None:
        assert res.returncode == check_rc, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def db(synth_case, tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "cams.h5"
    for cam, folder in synth_case["flats"].items():
        _spn("fingerprint", folder, "--camera", cam, "--db", path)
    return path


def _good_images(synth_case, folder: Path, n_per_cam: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for cam, k in synth_case["k"].items():
        for i in range(n_per_cam):
            p = folder / cam / f"{cam}_img_{i:02d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(encode_jpeg(expose(dead_leaves(k.shape, rng), k, rng), 90))
            paths.append(p)
    return paths


@pytest.fixture(scope="module")
def evidence(synth_case, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seized")
    _good_images(synth_case, folder, 5, seed=77)
    return folder


def _csv(case: Path) -> bytes:
    return (case / "results.csv").read_bytes()


def test_batch_case_folder_resume_and_verify(db, evidence, tmp_path):
    before = _snapshot(evidence)
    case = tmp_path / "case"
    res = _spn(
        "match",
        evidence,
        "--db",
        db,
        "--case",
        case,
        "--workers",
        "2",
        "--examiner",
        "A. Examiner",
        "--case-id",
        "C-42",
        "-f",
        "json",
    )
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(rows) == 10 * 2
    for r in rows:
        assert (r["decision"] == "consistent") == Path(r["image"]).name.startswith(r["camera"]), r
    header = _csv(case).decode().splitlines()[0].split(",")
    for col in (
        "image",
        "sha256",
        "size_bytes",
        "jpeg_quality",
        "camera",
        "pce",
        "ncc",
        "decision",
        "rotation",
        "restored",
    ):
        assert col in header
    manifest = json.loads((case / "manifest.json").read_text())
    assert manifest["case_id"] == "C-42" and manifest["examiner"] == "A. Examiner" and manifest["database_sha256"]
    assert len(manifest["inputs"]) == 10 and all(len(i["sha256"]) == 64 for i in manifest["inputs"])
    assert manifest["runs"][-1]["status"] == "completed" and manifest["version"]
    audit = [json.loads(x) for x in (case / "audit.jsonl").read_text().splitlines()]
    assert [a["event"] for a in audit] == ["match-start", *["match-checkpoint"] * 10, "match-completed"]
    # each checkpoint records results.jsonl as it stood, growing image by image
    sizes = [a["files"]["results.jsonl"]["size"] for a in audit[1:-1]]
    assert sizes == sorted(sizes) and sizes[-1] == (case / "results.jsonl").stat().st_size
    assert audit[1]["prev_hash"] == audit[0]["hash"] and audit[0]["examiner"] == "A. Examiner"
    assert list((case / "artifacts").glob("*/surface-*.npy")) and list((case / "artifacts").glob("*/residual.png"))
    first = _csv(case)
    # a second run resumes: everything is skipped, the results are the same
    res = _spn("match", evidence, "--db", db, "--case", case, "--workers", "1")
    assert "10 already done" in res.stderr and _csv(case) == first
    audit_before = (case / "audit.jsonl").read_bytes()
    ok = _spn("case", "verify", case)
    assert "10 input(s) unchanged" in ok.stdout and "verifies" in ok.stdout
    assert (case / "audit.jsonl").read_bytes() == audit_before  # verify writes nothing
    # tampering is reported: a changed input and an edited audit entry
    copy = tmp_path / "copy"
    shutil.copytree(evidence, copy)
    case2 = tmp_path / "case2"
    _spn("match", copy, "--db", db, "--case", case2, "--workers", "1")
    victim = sorted(copy.rglob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    lines = (case2 / "audit.jsonl").read_text().splitlines()
    entry = json.loads(lines[0])
    entry["examiner"] = "someone else"
    lines[0] = json.dumps(entry, sort_keys=True)
    (case2 / "audit.jsonl").write_text("\n".join(lines) + "\n")
    bad = _spn("case", "verify", case2, check_rc=1)
    assert f"{victim}: changed" in bad.stderr and "audit entry 0: altered" in bad.stderr
    assert _snapshot(evidence) == before
    res = _spn("match", evidence, "--db", db, "--case", evidence / "case", check_rc=2)
    assert "inside the evidence" in res.stderr


def _reference_csv(folder: Path, db: Path, case: Path) -> bytes:
    """results.csv of an uninterrupted run, made in-process (the same job and commit path, no cluster to start)."""
    from spncli.calibration import tails_for
    from spncli.casework import run_case
    from spncli.identify import Matcher, MatchSettings
    from spncli.leaks import match_warnings
    from spncli.store import FingerprintStore

    store = FingerprintStore(db)
    matcher = Matcher((store.load(n) for n in store.cameras()), MatchSettings())
    matcher.tails, _ = tails_for(store, matcher.settings)  # as spn match sets them: the rows say why no tail
    matcher.warnings = match_warnings(store, store.cameras())
    run_case([folder], case, matcher, db=db, db_sha=store.file_sha256(), cluster=False, handle_signals=False)
    return _csv(case)


def _wait_rows(proc, case: Path, n: int, timeout: float = 120) -> None:
    """Poll until the running case holds at least ``n`` rows (or the process ended)."""
    deadline = time.monotonic() + timeout
    rows = case / "results.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if rows.exists() and rows.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{case}: fewer than {n} rows while the run was going (rc {proc.poll()})")


def _pictures_complete(case: Path) -> None:
    """Every consistent row has its correlation surface and residual preview (pictures are committed first)."""
    for r in map(json.loads, (case / "results.jsonl").read_text().splitlines()):
        if r["decision"] == "consistent":
            folder = case / "artifacts" / r["sha256"][:16]
            assert (folder / f"surface-{r['camera']}.npy").is_file() and (folder / "residual.png").is_file(), r


def test_interrupted_then_resumed_equals_uninterrupted(db, synth_case, tmp_path):
    """A real SIGINT mid-run: it is deferred to the next commit, so what the run reports it kept is what
    the case holds (this test was flaky when the interrupt landed between appending rows and counting)."""
    folder = tmp_path / "ev"
    _good_images(synth_case, folder, 8, seed=5)
    full = _reference_csv(folder, db, tmp_path / "full")
    part = tmp_path / "part"
    proc = subprocess.Popen(
        [*SPN, "match", str(folder), "--db", str(db), "--case", str(part), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_rows(proc, part, 4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    manifest = json.loads((part / "manifest.json").read_text())
    assert manifest["runs"][-1]["status"] == "interrupted"
    kept = manifest["runs"][-1]["scored"]
    assert 2 <= kept < 16
    rows = [json.loads(x) for x in (part / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * kept  # the count in the manifest is the rows in the case
    _pictures_complete(part)
    assert _spn("case", "verify", part).returncode == 0  # an interrupted run's case verifies
    res = _spn("match", folder, "--db", db, "--case", part, "--workers", "1")
    assert f"{kept} already done" in res.stderr
    same_results(_csv(part), full)
    events = [json.loads(x)["event"] for x in (part / "audit.jsonl").read_text().splitlines()]
    events = [e for e in events if e != "match-checkpoint"]
    assert events == ["match-start", "match-interrupted", "match-start", "match-completed"]


def test_second_run_refused_and_sigkill_at_several_row_counts(db, synth_case, tmp_path):
    """Two runs on one case: the second fails at once naming the first. SIGKILL at several row counts
    (the first run stopped with SIGSTOP at that count, so the count is where it dies; twice in a row), then
    a resume: the same results as an uninterrupted run, every picture, a case that
    verifies."""
    folder = tmp_path / "ev"
    _good_images(synth_case, folder, 4, seed=9)
    full = _reference_csv(folder, db, tmp_path / "full")
    case = tmp_path / "case"
    for n in (2, 7):
        proc = subprocess.Popen(
            [*SPN, "match", str(folder), "--db", str(db), "--case", str(case), "--workers", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_rows(proc, case, n)
        proc.send_signal(signal.SIGSTOP)  # held still, lock and all, at this row count
        second = _spn("match", folder, "--db", db, "--case", case, "--workers", "1", check_rc=2)
        assert f"another run holds the case (pid {proc.pid} on " in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        proc.kill()
        proc.wait(timeout=60)
        assert _spn("case", "verify", case, check_rc=1).stderr.count("has no end entry") == 1
    res = _spn("match", folder, "--db", db, "--case", case, "--workers", "1")
    assert "already done" in res.stderr
    same_results(_csv(case), full)
    _pictures_complete(case)
    head = res.stderr.split("audit chain head: ", 1)[1].split()[0]
    ok = _spn("case", "verify", case, "--head", head)
    assert f"audit chain head: {head}" in ok.stdout


def test_dask_scheduler_and_workers_give_the_local_results(db, evidence, tmp_path):
    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("the dask command is not installed beside this Python")
    sched_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [
                str(dask),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(sched_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [str(dask), "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        local = tmp_path / "local"
        _spn("match", evidence, "--db", db, "--case", local, "--workers", "2")
        remote = tmp_path / "remote"
        deadline = time.time() + 60
        while time.time() < deadline:  # wait for both workers to register
            res = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"from distributed import Client; c = Client('{address}', "
                    "timeout=5); print(len(c.scheduler_info()['workers']))",
                ],
                capture_output=True,
                text=True,
            )
            if res.stdout.strip() == "2":
                break
            time.sleep(0.5)
        _spn("match", evidence, "--db", db, "--case", remote, "--scheduler", address)
        same_results(_csv(remote), _csv(local))
        params = json.loads((remote / "manifest.json").read_text())["parameters"]
        assert params["scheduler"] == address
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def _png_header(cols, rows):
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    ihdr = struct.pack(">IIBBBBB", cols, rows, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def corpus(synth_case, tmp_path):
    """A seized folder of good files in many formats and every kind of bad file."""
    from PIL import Image

    root = tmp_path / "seized"
    rng = np.random.default_rng(11)
    k = synth_case["k"]["CAM-A"]
    shape = k.shape

    def shot():
        return expose(dead_leaves(shape, rng), k, rng)

    good = {}
    (root / "a" / "b" / "c" / "d").mkdir(parents=True)
    good["a/plain.jpg"] = encode_jpeg(shot(), 92)
    ok, prog = cv2.imencode(".jpg", shot()[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    good["a/b/progressive.jpg"] = prog.tobytes()
    rgba = np.dstack([shot()[:, :, ::-1], np.full(shape, 200, np.uint8)])
    good["a/b/alpha.png"] = cv2.imencode(".png", rgba)[1].tobytes()
    good["a/b/c/sixteen.tif"] = cv2.imencode(".tif", shot()[:, :, ::-1].astype(np.uint16) * 257)[1].tobytes()
    cmyk = root / "a" / "b" / "c" / "d" / "cmyk.jpg"
    Image.fromarray(shot()).convert("CMYK").save(cmyk, quality=95)
    good["a/no_extension_jpeg"] = encode_jpeg(shot(), 92)  # found by content
    for rel, data in good.items():
        (root / rel).write_bytes(data)
    good["a/b/c/d/cmyk.jpg"] = cmyk.read_bytes()
    truncated = encode_jpeg(shot(), 92)
    bad = {
        "zero.jpg": (b"", "empty file"),
        "truncated.jpg": (truncated[: len(truncated) // 3], "truncated"),
        "random.jpg": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not an image"),
        "tiny.png": (cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1].tobytes(), "too small"),
        "huge_header.png": (_png_header(10_000, 10_000), "could not be decoded"),
        "over_bound.png": (_png_header(20_000, 15_000), "exceeds the bound"),
        "locked.jpg": (encode_jpeg(shot(), 92), "permission denied"),
    }
    for name, (data, _) in bad.items():
        (root / "a" / name).write_bytes(data)
    (root / "a" / "locked.jpg").chmod(0)
    (root / "notes.txt").write_text("not evidence of anything\n")  # neither image suffix nor signature: not taken
    os.symlink(root / "a", root / "a" / "b" / "c" / "loop")  # a symlink loop is not followed
    os.symlink("/etc", root / "outside")  # nor a link out of the folder: it gets an error row
    return root, good, bad


def test_robustness_corpus(db, corpus, tmp_path):
    root, good, bad = corpus
    case = tmp_path / "case"
    cmd = unprivileged(
        [*SPN, "--max-pixels", "200000000", "match", str(root), "--db", str(db), "--case", str(case), "--workers", "2"]
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)  # a file vanishing mid-run: tests/test_casework.py (deterministic)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err, err[-5000:]
    errors = {
        Path(e["file"]).name: e["reason"] for e in map(json.loads, (case / "errors.jsonl").read_text().splitlines())
    }
    assert errors.pop("outside").startswith("symbolic link, not followed"), errors
    assert set(errors) == set(bad), errors
    for name, (_, words) in bad.items():
        assert words in errors[name], (name, errors[name])
        assert sum(name in line for line in err.splitlines() if line.startswith("error:")) == 1
    rows = [json.loads(x) for x in (case / "results.jsonl").read_text().splitlines()]
    scored = {Path(r["image"]).name for r in rows}
    assert scored == {Path(p).name for p in good}
    for r in rows:
        if r["camera"] == "CAM-A":
            assert r["pce"] > 60, r  # every good file, whatever its format, is scored and matched
    assert not any("etc" in r["image"] for r in rows)


def _images_decoded(chromium: str, html: Path, profile: Path) -> tuple[int, int]:
    """(decoded, total) pictures once every one has decoded or failed in headless Chromium.

    Virtual time is a budget, not a clock: on a loaded machine the page may not have settled within a
    small one (the cause of this test's flakiness), so a larger budget is tried before giving up.
    """
    dom = ""
    for budget in (5_000, 30_000, 120_000):
        res = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget}",
             "--dump-dom", html.as_uri()],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        dom = res.stdout
        if 'data-images-settled="yes"' in dom:
            loaded = dom.split('data-images-loaded="', 1)[1].split('"', 1)[0]
            done, total = map(int, loaded.split("/"))
            return done, total
    raise AssertionError(f"the report's pictures did not settle in Chromium; its DOM starts {dom[:300]!r}")


def test_report_renders_in_headless_chromium(db, evidence, tmp_path):
    """Issue 10: thumbnails, a labelled PCE scale, a readable residual detail, the fingerprints' sources,
    normalized paths, failed entries in the score table, probabilities as bounds, never 0.00e+00."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    case = tmp_path / "case"
    (tmp_path / "work").mkdir()
    roundabout = tmp_path / "work" / os.path.relpath(evidence, tmp_path / "work")  # .../work/../../seizedN
    assert ".." in roundabout.parts
    broken = tmp_path / "other" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    _spn("match", roundabout, broken, "--db", db, "--case", case, "--workers", "1", "--case-id", "R-1", check_rc=1)
    artifacts = [p for p in (case / "artifacts").rglob("*") if p.is_file()]
    assert len(artifacts) == 30, artifacts  # 10 true matches: a surface, a residual detail and a thumbnail each
    _spn("report", case, "--pdf")
    html = (case / "report.html").read_text()
    assert "consistent with CAM-A" in html and "does not exclude" in html and "R-1" in html
    assert "http://" not in html and "https://" not in html  # self-contained
    assert html.count("data:image/jpeg;base64,") == 10  # a thumbnail of each matched image
    assert "PCE (log scale)" in html and "threshold 60" in html
    assert "0.00e+00" not in html
    assert "/../" not in html and "/./" not in html
    assert str(evidence.resolve() / "CAM-A" / "CAM-A_img_00.jpg") in html  # full, normalized paths
    assert f"{broken}</code></td><td>—</td><td>—</td><td>—</td><td>failed: " in html  # failed entries listed
    assert "CAM-A_flat_0.jpg" in html and "6 source image(s)" in html  # the fingerprint's sources
    done, total = _images_decoded(chromium, case / "report.html", tmp_path / "profile")
    assert total >= 30 and done == total  # thumbnails, residual details and correlation surfaces all decode
    assert (case / "report.pdf").read_bytes()[:5] == b"%PDF-"
    last = json.loads((case / "audit.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "report" and last["verified"] and set(last["report_files"]) == {"report.html", "report.pdf"}
    assert _spn("case", "verify", case).returncode == 0  # the report's files are recorded: the case still verifies


def test_report_writes_tiny_probabilities_as_bounds():
    from spncli.report import format_probability, normalized_path, pce_scale_svg

    assert format_probability(0.0) == "< 1e-300" and format_probability(1e-320) == "< 1e-300"
    assert format_probability(3.14e-12) == "3.14e-12" and format_probability(None) == "n/a"
    assert normalized_path("/evidence/work/../seized/./a.jpg") == "/evidence/seized/a.jpg"
    svg = pce_scale_svg(1234.5, 60)
    assert "threshold 60" in svg and "PCE (log scale)" in svg and ">1000<" in svg and ">10<" in svg


def test_fingerprint_processes_at_once_and_kill(synth_case, tmp_path):
    db = tmp_path / "db.h5"
    a = subprocess.Popen(
        [*SPN, "fingerprint", str(synth_case["flats"]["CAM-A"]), "-c", "A", "--db", str(db)],
        stderr=subprocess.PIPE,
        text=True,
    )
    b = subprocess.Popen(
        [*SPN, "fingerprint", str(synth_case["flats"]["CAM-B"]), "-c", "B", "--db", str(db)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert a.wait(120) == 0 and b.wait(120) == 0
    victim = subprocess.Popen(
        [*SPN, "fingerprint", str(synth_case["flats"]["CAM-A"]), "-c", "C", "--db", str(db)],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    victim.kill()
    victim.wait()
    res = _spn("db", "list", "--db", db, "-f", "json")
    cams = [json.loads(x)["camera"] for x in res.stdout.splitlines()]
    assert {"A", "B"} <= set(cams)
    for cam in cams:
        _spn("db", "show", "--db", db, cam)
