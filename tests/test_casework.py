"""The case workflow in-process: commit per image, resume, lock, links, tampering caught by verify."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spncli.casefile import Case, CaseBusy, CaseError
from spncli.casework import run_case
from spncli.cli import app
from spncli.identify import Matcher, MatchSettings, build_fingerprint
from spncli.store import FingerprintStore
from spncli.synthetic import dead_leaves, encode_jpeg, expose


@pytest.fixture(scope="module")
def db(synth_case, tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "cams.h5"
    store = FingerprintStore(path)
    for cam, folder in synth_case["flats"].items():
        k, meta = build_fingerprint(sorted(folder.glob("*.jpg")), cam)
        store.add(cam, k, meta)
    return path


@functools.cache
def _matcher(db: Path, threshold: float = 60.0) -> tuple[Matcher, str]:
    """The matcher (its transforms computed once per module) and the database's SHA-256."""
    store = FingerprintStore(db)
    return Matcher((store.load(n) for n in store.cameras()), MatchSettings(threshold=threshold)), store.file_sha256()


@pytest.fixture(scope="module")
def evidence(synth_case, tmp_path_factory):
    """Two images per camera, a copy of one under another name (same bytes), and one broken file."""
    root = tmp_path_factory.mktemp("seized")
    rng = np.random.default_rng(3)
    for cam, k in synth_case["k"].items():
        for i in range(2):
            (root / f"{cam}_{i}.jpg").write_bytes(encode_jpeg(expose(dead_leaves(k.shape, rng), k, rng), 90))
    (root / "sub").mkdir()
    shutil.copy(root / "CAM-A_0.jpg", root / "sub" / "copy_of_A0.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not much of a jpeg")
    return root


def _run(evidence, case, db, **kw):
    matcher, db_sha = _matcher(db, kw.pop("threshold", 60.0))
    return run_case([evidence], case, matcher, db=db, db_sha=db_sha, cluster=False, handle_signals=False, **kw)


SCORES = ("pce", "ncc", "p_fa")


def same_results(a: bytes, b: bytes) -> None:
    """Two results.csv hold the same rows: every column equal, the scores to 1e-6 relative.

    The classic residual is not yet bit-reproducible from one run to the next (a last-bit difference seen
    in one image's PCE, 1e-9 relative, moves its false-alarm probability in the 7th digit), so scores are
    compared to a tolerance far below any decision; everything else, the decisions included, exactly.
    """
    ra, rb = (list(csv.DictReader(io.StringIO(x.decode()))) for x in (a, b))
    assert len(ra) == len(rb) and ra and list(ra[0]) == list(rb[0])
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if k not in SCORES} == {k: v for k, v in y.items() if k not in SCORES}
        for k in SCORES:
            assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-6, abs=1e-12), (k, x, y)


def _state(folder: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def done_case(evidence, db, tmp_path_factory):
    """A completed case (module-wide; copy it before changing it) and its run summary."""
    case = tmp_path_factory.mktemp("done") / "case"
    return case, _run(evidence, case, db, examiner="A. Examiner", case_id="C-7")


def _copy(done_case, tmp_path) -> Path:
    dst = tmp_path / "case"
    shutil.copytree(done_case[0], dst, symlinks=True)
    return dst


def test_run_records_every_path_duplicates_and_the_head(done_case, evidence):
    case, summary = done_case
    assert summary.status == "completed" and summary.files == 6
    assert (summary.scored, summary.errors, summary.skipped) == (5, 1, 0)
    rows = Case(case).rows()
    assert len(rows) == 10 and summary.consistent == 5
    for r in rows:
        own = Path(r["image"]).name.startswith(r["camera"]) or ("copy_of_A0" in r["image"] and r["camera"] == "CAM-A")
        assert (r["decision"] == "consistent") == own, r
    manifest = json.loads((case / "manifest.json").read_text())
    walked = {str(p) for p in evidence.rglob("*.jpg")}
    assert {i["path"] for i in manifest["inputs"]} == walked  # every walked path, scored or with its error
    [dup] = manifest["duplicates"]
    same = sorted([str(evidence / "CAM-A_0.jpg"), str(evidence / "sub/copy_of_A0.jpg")])
    assert [d["path"] for d in dup["paths"]] == same
    assert all(len(d["rows"]) == 2 for d in dup["paths"])
    audit = [json.loads(x) for x in (case / "audit.jsonl").read_text().splitlines()]
    assert [a["event"] for a in audit if a["event"] != "match-checkpoint"] == ["match-start", "match-completed"]
    assert audit[-1]["hash"] == summary.head
    files = audit[-1]["files"]
    assert {"results.jsonl", "results.csv", "errors.jsonl", "manifest.json"} <= set(files)
    assert any(f.startswith("artifacts/") and f.endswith(".png") for f in files)
    assert any(f.startswith("artifacts/") and f.endswith(".npy") for f in files)
    assert Case(case).verify(head=summary.head).ok


def test_verify_writes_nothing_and_prints_the_head(done_case, tmp_path):
    case = _copy(done_case, tmp_path)
    before = _state(case)
    res = CliRunner().invoke(app, ["case", "verify", str(case), "--head", done_case[1].head])
    assert res.exit_code == 0, res.output
    assert f"audit chain head: {done_case[1].head}" in res.stdout and "verifies" in res.stdout
    assert _state(case) == before  # read-only: not one byte, not one mtime
    res = CliRunner().invoke(app, ["case", "verify", str(case), "--record"])
    assert res.exit_code == 0 and json.loads((case / "audit.jsonl").read_text().splitlines()[-1])["event"] == "verify"
    assert CliRunner().invoke(app, ["case", "verify", str(case), "--head", done_case[1].head]).exit_code == 0


def _edit_csv(case: Path, fn) -> None:
    lines = (case / "results.csv").read_text().splitlines()
    (case / "results.csv").write_text("\n".join(fn(lines)) + "\n")


def _first_consistent_row(lines):
    i = next(i for i, x in enumerate(lines) if ",consistent," in x)
    return i


def _set_threshold(case: Path) -> None:
    m = json.loads((case / "manifest.json").read_text())
    m["parameters"]["threshold"] = 10.0
    (case / "manifest.json").write_text(json.dumps(m, indent=2))


def _drop_input(case: Path) -> None:
    m = json.loads((case / "manifest.json").read_text())
    m["inputs"] = m["inputs"][1:]
    (case / "manifest.json").write_text(json.dumps(m, indent=2))


def _flip(lines):
    i = next(i for i, x in enumerate(lines) if ",not consistent," in x)
    lines[i] = lines[i].replace(",not consistent,", ",consistent,")
    return lines


def _pce(lines):
    i = _first_consistent_row(lines)
    cells = lines[i].split(",")
    cells[5] = "999.0"
    lines[i] = ",".join(cells)
    return lines


def _edit_jsonl(case: Path) -> None:
    rows = [json.loads(x) for x in (case / "results.jsonl").read_text().splitlines()]
    rows[0]["pce"] = 1234.5
    (case / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _edit_picture(case: Path) -> None:
    pic = sorted((case / "artifacts").rglob("residual.png"))[0]
    data = bytearray(pic.read_bytes())
    data[-20] ^= 0xFF
    pic.write_bytes(bytes(data))


TAMPERING = {
    "csv PCE edited": (lambda c: _edit_csv(c, _pce), "results.csv: changed"),
    "csv row deleted": (lambda c: _edit_csv(c, lambda lines: lines[:2] + lines[3:]), "results.csv: changed"),
    "csv junk appended": (lambda c: _edit_csv(c, lambda lines: [*lines, "junk,1,2"]), "results.csv: changed"),
    "csv decision flipped": (lambda c: _edit_csv(c, _flip), "results.csv: changed"),
    "jsonl edited": (_edit_jsonl, "results.jsonl: changed"),
    "errors emptied": (lambda c: (c / "errors.jsonl").write_text(""), "errors.jsonl: changed"),
    "threshold edited": (_set_threshold, "manifest.json: changed"),
    "manifest entry removed": (_drop_input, "manifest.json: changed"),
    "picture edited": (_edit_picture, "residual.png: changed"),
    "picture removed": (lambda c: sorted((c / "artifacts").rglob("*.npy"))[0].unlink(), ".npy: missing"),
    "file added": (lambda c: (c / "artifacts" / "extra.png").write_bytes(b"x"), "extra.png: not recorded"),
}


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_verify_names_each_tampering(done_case, tmp_path, name):
    case = _copy(done_case, tmp_path)
    tamper, expected = TAMPERING[name]
    tamper(case)
    before = _state(case)
    res = CliRunner().invoke(app, ["case", "verify", str(case)])
    assert res.exit_code == 1, res.output
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert any(expected in x for x in lines), res.stderr
    assert f"audit chain head: {done_case[1].head}" in res.stdout
    assert _state(case) == before
    with pytest.raises(CaseError, match="changed since its audit trail recorded it"):  # a run will not build on it
        _refuse(case)
    res = CliRunner().invoke(app, ["report", str(case)])
    assert res.exit_code == 1 and not (case / "report.html").exists(), res.output
    res = CliRunner().invoke(app, ["report", str(case), "--allow-unverified"])
    assert res.exit_code == 0, res.output
    assert "NOT VERIFIED" in (case / "report.html").read_text()


def _refuse(case: Path) -> None:
    from spncli.casework import _check_resume

    _check_resume(Case(case), {}, "")


def test_dropped_last_audit_line_is_caught(done_case, tmp_path):
    case = _copy(done_case, tmp_path)
    head = done_case[1].head
    lines = (case / "audit.jsonl").read_text().splitlines()
    (case / "audit.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    res = CliRunner().invoke(app, ["case", "verify", str(case), "--head", head])
    assert res.exit_code == 1
    assert f"the noted head {head} is not in the chain" in res.stderr
    assert "has no end entry" in res.stderr
    printed = res.stdout.split("audit chain head: ", 1)[1].split()[0]
    assert printed != head  # the examiner's note and the printed head differ


def test_forged_chain_is_caught_only_against_the_noted_head(done_case, tmp_path):
    """An adversary who edits a file and rebuilds the last entry's hashes passes everything but the head."""
    from spncli.casefile import _entry_hash

    def rebuild_last(case):
        lines = (case / "audit.jsonl").read_text().splitlines()
        last = json.loads(lines[-1])
        last["files"] = Case(case).files()
        last["hash"] = _entry_hash(last)
        (case / "audit.jsonl").write_text("\n".join([*lines[:-1], json.dumps(last, sort_keys=True)]) + "\n")

    case = _copy(done_case, tmp_path)
    _edit_csv(case, _flip)
    rebuild_last(case)  # results.csv is checked against the rows it is written from, chain or no chain
    assert Case(case).verify().problems == ["results.csv: not the rows of results.jsonl (a run writes it from them)"]
    case = _copy(done_case, tmp_path / "b")  # the manifest's examiner must be the runs' (checked without a head)
    manifest = json.loads((case / "manifest.json").read_text())
    (case / "manifest.json").write_text(json.dumps(manifest | {"examiner": "Someone Else"}, indent=2) + "\n")
    rebuild_last(case)
    assert Case(case).verify().problems == ["manifest.json: examiner not those the audit trail's runs recorded"]
    case = _copy(done_case, tmp_path / "c")  # an error's reason is checked against nothing but the chain
    error = json.loads((case / "errors.jsonl").read_text().splitlines()[0])
    (case / "errors.jsonl").write_text(json.dumps(error | {"reason": "something else"}) + "\n")
    rebuild_last(case)
    assert Case(case).verify().ok
    v = Case(case).verify(head=done_case[1].head)
    assert not v.ok and v.head != done_case[1].head
    res = CliRunner().invoke(app, ["report", str(case), "--head", done_case[1].head])  # the report checks it too
    assert res.exit_code == 1 and "not in the chain" in res.stderr and not (case / "report.html").exists()


def test_second_run_fails_at_once_naming_the_holder(done_case, evidence, db, tmp_path):
    case = _copy(done_case, tmp_path)
    with Case(case).lock():
        with pytest.raises(CaseBusy, match=rf"another run holds the case \(pid {os.getpid()} on .+, started 20"):
            _run(evidence, case, db)
        res = CliRunner().invoke(app, ["match", str(evidence), "--db", str(db), "--case", str(case)])
        assert res.exit_code == 2 and f"pid {os.getpid()}" in res.stderr
        assert len([x for x in res.stderr.splitlines() if x.strip()]) == 1, res.stderr
        assert "a run is writing the case now" in "\n".join(Case(case).verify().problems)
    assert _run(evidence, case, db).skipped == 5  # released: the next run resumes


def test_deleting_the_lock_file_does_not_let_a_second_run_in(done_case, evidence, db, tmp_path):
    """Adversarial review: the lock was on case.lock, which a rival could unlink and recreate; it is on the folder."""
    case = _copy(done_case, tmp_path)
    with Case(case).lock():
        (case / "case.lock").unlink()
        with pytest.raises(CaseBusy, match="another run holds the case"):
            _run(evidence, case, db)
    assert _run(evidence, case, db).skipped == 5


def test_hard_links_and_fifos_in_place_of_case_files_are_refused(done_case, evidence, db, tmp_path):
    """Adversarial review: a hard-linked case file let a resume append to a file outside the case; a FIFO hung."""
    case = _copy(done_case, tmp_path)
    outside = tmp_path / "outside.jsonl"
    shutil.copy(case / "results.jsonl", outside)
    before = outside.read_bytes()
    (case / "results.jsonl").unlink()
    os.link(outside, case / "results.jsonl")
    with pytest.raises(CaseError, match="hard links"):
        _run(evidence, case, db)
    assert outside.read_bytes() == before
    assert any("hard links" in p for p in Case(case).verify().problems)
    fifo_case = _copy(done_case, tmp_path / "f")
    (fifo_case / "audit.jsonl").unlink()
    os.mkfifo(fifo_case / "audit.jsonl")
    problems = Case(fifo_case).verify().problems  # returns (no hang) and names the file
    assert any("audit.jsonl" in p for p in problems), problems
    with pytest.raises(CaseError):
        _run(evidence, fifo_case, db)


def test_a_folder_in_place_of_the_case_lock_is_one_line_everywhere(done_case, evidence, db, tmp_path):
    """An adversarial pass: a folder named case.lock made `spn report` crash with IsADirectoryError, and verify
    passed the case; a resume said "cannot write the case: Is a directory"."""
    case = _copy(done_case, tmp_path)
    (case / "case.lock").unlink(missing_ok=True)
    (case / "case.lock").mkdir()
    problems = Case(case).verify().problems
    assert any(p.startswith("case.lock: is a folder where the case keeps a file") for p in problems), problems
    with pytest.raises(CaseError, match="case.lock: is a folder where the case keeps a file"):
        _run(evidence, case, db)
    res = CliRunner().invoke(app, ["report", str(case)])
    assert res.exit_code != 0 and "Traceback" not in res.output and "case.lock" in res.output, res.output
    assert not isinstance(res.exception, IsADirectoryError)


def test_verify_names_duplicate_rows(done_case, tmp_path):
    case = _copy(done_case, tmp_path)
    lines = (case / "results.jsonl").read_text().splitlines()
    (case / "results.jsonl").write_text("\n".join(lines + lines[:1]) + "\n")
    problems = Case(case).verify().problems
    assert any("2 rows for" in p for p in problems), problems


def test_resume_keyed_by_path_and_sha(done_case, evidence, db, tmp_path):
    case = _copy(done_case, tmp_path)
    summary = _run(evidence, case, db)
    assert (summary.scored, summary.skipped, summary.errors) == (0, 5, 1)
    assert (case / "results.csv").read_bytes() == (done_case[0] / "results.csv").read_bytes()
    assert Case(case).verify(head=summary.head).ok


def test_resume_refuses_other_parameters(done_case, evidence, db, tmp_path):
    case = _copy(done_case, tmp_path)
    with pytest.raises(CaseError, match=r"other parameters \(threshold 60.0 -> 50.0\)"):
        _run(evidence, case, db, threshold=50.0)


def test_links_files_and_evidence_in_the_case_are_refused(done_case, evidence, db, tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"precious" * 100)
    case = _copy(done_case, tmp_path)
    (case / "results.jsonl").unlink()
    os.symlink(outside, case / "results.jsonl")
    with pytest.raises(CaseError, match="symbolic link"):
        _run(evidence, case, db)
    assert outside.read_bytes() == b"precious" * 100
    assert any("results.jsonl: is a symbolic link inside the case" in p for p in Case(case).verify().problems)
    link = tmp_path / "link-case"
    os.symlink(done_case[0], link)
    with pytest.raises(CaseError, match="symbolic link"):
        _run(evidence, link, db)
    art = tmp_path / "c2"
    shutil.copytree(done_case[0], art)
    shutil.rmtree(art / "artifacts")
    os.symlink(tmp_path, art / "artifacts")
    with pytest.raises(CaseError, match="symbolic link"):
        _run(evidence, art, db)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(CaseError, match="exists and is not a folder"):
        _run(evidence, a_file, db)
    res = CliRunner().invoke(app, ["match", str(evidence), "--db", str(db), "--case", str(a_file)])
    assert res.exit_code == 2 and "exists and is not a folder" in res.stderr and res.exception.__class__ is SystemExit
    with pytest.raises(CaseError, match="inside the evidence"):
        _run(evidence, evidence / "case", db)
    fresh = tmp_path / "fresh"
    (fresh / "artifacts").mkdir(parents=True)
    shutil.copy(evidence / "CAM-A_1.jpg", fresh / "artifacts" / "x.jpg")
    with pytest.raises(CaseError, match="evidence inside the output folder"):
        _run(fresh / "artifacts", fresh, db)
    other = tmp_path / "not-a-case"
    other.mkdir()
    (other / "thesis.txt").write_text("mine")
    with pytest.raises(CaseError, match="not a case folder"):
        _run(evidence, other, db)


def test_file_vanishing_after_the_walk_is_an_error_row(evidence, db, tmp_path, monkeypatch):
    import spncli.casework as cw

    ev = tmp_path / "ev"
    shutil.copytree(evidence, ev)
    real = cw.gather_inputs

    def walk_then_vanish(items, **options):
        yield from real(items, **options)
        (ev / "CAM-B_1.jpg").unlink()  # after the walk, before any file is read

    monkeypatch.setattr(cw, "gather_inputs", walk_then_vanish)
    summary = _run(ev, tmp_path / "case", db)
    errors = {Path(e["file"]).name: e["reason"] for e in Case(tmp_path / "case").error_rows()}
    assert "no such file" in errors["CAM-B_1.jpg"] and summary.errors == 2


def test_stop_after_a_committed_image_then_resume_equals_uninterrupted(done_case, evidence, db, tmp_path):
    for n in (1, 3):
        case = tmp_path / f"case{n}"
        seen = []
        summary = _run(evidence, case, db, on_result=seen.append, stop=lambda: len(seen) >= n)
        assert summary.status == "interrupted" and summary.scored + summary.errors == n
        manifest = json.loads((case / "manifest.json").read_text())
        assert manifest["runs"][-1]["status"] == "interrupted"
        assert sum(i["status"].startswith("not reached") for i in manifest["inputs"]) == 6 - n
        assert Case(case).verify(head=summary.head).ok  # an interrupted run's end entry covers its files
        again = _run(evidence, case, db)
        assert again.skipped == summary.scored
        same_results((case / "results.csv").read_bytes(), (done_case[0] / "results.csv").read_bytes())
        assert Case(case).verify().ok


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even ``finally`` blocks that write)."""


def test_killed_at_every_write_step_resumes_to_the_same_case(evidence, db, tmp_path, monkeypatch):
    """Kill after the k-th write of a run (and before it, or halfway through an append), for every k; a resume ends
    with the uninterrupted results, every picture, and a case that verifies."""
    small = tmp_path / "ev"  # one image per camera, a same-bytes copy, a broken file: every kind of commit
    for rel in ("CAM-A_0.jpg", "CAM-B_0.jpg", "sub/copy_of_A0.jpg", "broken.jpg"):
        (small / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(evidence / rel, small / rel)
    evidence = small
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # an exception stands for the kill here, not a power cut
    reference = tmp_path / "reference"
    _run(evidence, reference, db)
    want = (reference / "results.csv").read_bytes()
    want_files = set(json.loads((reference / "audit.jsonl").read_text().splitlines()[-1])["files"])
    real_append, real_write = Case._append, Case._write
    k_max = None
    k = 0
    while k_max is None or k < k_max:
        k += 1
        for torn in (False, True):
            case = tmp_path / f"k{k}{'t' if torn else ''}"
            calls = {"n": 0}

            def append(self, path, lines, torn=torn):
                calls["n"] += 1
                if calls["n"] == k and torn:
                    data = "".join(line + "\n" for line in lines).encode()
                    with open(path, "ab") as f:
                        f.write(data[: max(1, len(data) // 2)])
                    raise Killed
                written = real_append(self, path, lines)
                if calls["n"] == k:
                    raise Killed
                return written

            def write(self, path, data, torn=torn):
                calls["n"] += 1
                if calls["n"] == k and torn:  # cut before this write
                    raise Killed
                real_write(self, path, data)
                if calls["n"] == k:
                    raise Killed

            monkeypatch.setattr(Case, "_append", append)
            monkeypatch.setattr(Case, "_write", write)
            try:
                _run(evidence, case, db)
                killed = False
            except Killed:
                killed = True
            finally:
                monkeypatch.setattr(Case, "_append", real_append)
                monkeypatch.setattr(Case, "_write", real_write)
            if not killed:
                k_max = k
                continue
            entries = Case(case).audit_entries()[0]
            ended = bool(entries) and entries[-1]["event"] == "match-completed"  # killed after its last write
            assert Case(case).verify().ok == ended  # a killed run is not a finished case
            summary = _run(evidence, case, db)
            assert summary.status == "completed", k
            same_results((case / "results.csv").read_bytes(), want)
            assert set(Case(case).files()) == want_files, (k, torn)
            assert Case(case).verify(head=summary.head).ok, (k, torn, Case(case).verify().problems)
    assert k_max > 10  # the run has that many write steps, each one was cut


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    from spncli.cli import _batch, _common

    # the private slot, so that the Console goes back to following sys.stderr afterwards
    monkeypatch.setattr(_common.err, "_file", __import__("sys").stderr)
    with _batch.BatchProgress("match", every_s=0.0) as bar:
        bar.start(3)
        for failed in (False, True, False):
            bar.advance(failed)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("match: ")]
    assert [x.split(",")[0] for x in lines] == ["match: 1/3 file(s)", "match: 2/3 file(s)", "match: 3/3 file(s)"]
    assert "1 failed" in lines[-1] and "img/s" in lines[-1]


def test_no_import_cycle_under_cli_and_the_workflow_is_library():
    """cli/match.py and cli/case.py no longer import each other; casework/casefile import no CLI framework."""
    import ast

    root = Path(__file__).resolve().parents[1] / "spncli"
    graph = {}
    for f in (root / "cli").glob("*.py"):
        tree = ast.parse(f.read_text())
        graph[f.stem] = {
            n.module.lstrip(".") if n.level == 1 and n.module else a.name
            for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
            for a in ([ast.alias(name=n.module)] if n.module else n.names)
        } & {g.stem for g in (root / "cli").glob("*.py")}  # fmt: skip

    def reaches(a, b, seen=()):
        return any(x == b or (x not in seen and reaches(x, b, (*seen, x))) for x in graph.get(a, ()))

    assert not any(reaches(m, m) for m in graph), graph
    for name in ("casework.py", "casefile.py", "jobs.py", "batch.py"):
        text = (root / name).read_text()
        assert "import typer" not in text and "from rich" not in text and "from .cli" not in text, name


def _rechain(case: Path, edit) -> None:
    """Apply ``edit`` to the audit entries, then recompute every entry's hash and link (a forger's work)."""
    from spncli.casefile import GENESIS, _entry_hash

    entries = [json.loads(x) for x in (case / "audit.jsonl").read_text().splitlines()]
    entries = edit(entries)
    prev = GENESIS
    for i, e in enumerate(entries):
        e["seq"], e["prev_hash"] = i, prev
        e["hash"] = _entry_hash(e)
        prev = e["hash"]
    (case / "audit.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def _forged_row(case: Path) -> dict:
    row = json.loads((case / "results.jsonl").read_text().splitlines()[0])
    return row | {"camera": "CAM-B", "pce": 5000.0, "decision": "consistent", "p_fa": 0.0}


def test_rows_a_killed_run_left_past_its_last_checkpoint_are_never_adopted(done_case, evidence, db, tmp_path):
    """A forged row appended after a kill (past what the last checkpoint records) is dropped by the resume, and
    its image scored again: the case ends as the uninterrupted one."""
    case = _copy(done_case, tmp_path)
    c = Case(case)
    first = json.loads((case / "audit.jsonl").read_text().splitlines()[0])
    with c.lock():  # a run that was killed before its first commit
        c.audit("match-start", **{k: first[k] for k in ("parameters", "database_sha256", "evidence", "examiner",
                                                         "case_id")})  # fmt: skip
    with open(case / "results.jsonl", "a") as f:
        f.write(json.dumps(_forged_row(case)) + "\n")
    assert not c.verify().ok  # a killed run is never a finished case
    notices = []
    summary = _run(evidence, case, db, on_notice=notices.append)
    assert any(n.startswith("dropped 1 row(s) past the last audit entry") for n in notices), notices
    same_results((case / "results.csv").read_bytes(), (done_case[0] / "results.csv").read_bytes())
    assert all(r["pce"] != 5000.0 for r in Case(case).rows())
    assert Case(case).verify(head=summary.head).ok


def test_checkpoints_record_each_committed_image_and_verify_checks_them(done_case, evidence, db, tmp_path):
    """Checkpoints record results.jsonl and the pictures as each image is committed; a picture a checkpoint
    recorded that is changed after a kill is caught, and a checkpoint outside a run is named."""
    entries = [json.loads(x) for x in (done_case[0] / "audit.jsonl").read_text().splitlines()]
    checkpoints = [e for e in entries if e["event"] == "match-checkpoint"]
    assert len(checkpoints) == done_case[1].scored
    pictures = {rel for e in checkpoints for rel in e["files"] if rel.startswith("artifacts/")}
    assert pictures == {rel for rel in entries[-1]["files"] if rel.startswith("artifacts/")}
    assert all("version" not in e for e in checkpoints)  # light entries: the start entry has the versions
    # killed run with a recorded picture altered
    case = _copy(done_case, tmp_path)
    _rechain(case, lambda es: es[:-1])  # as if killed before its end entry
    victim = sorted(pictures)[0]
    (case / victim).write_bytes(b"tampered")
    problems = Case(case).verify().problems
    assert any(p.startswith(f"{victim}: changed since audit entry") for p in problems), problems
    with pytest.raises(CaseError, match="changed since"):
        _run(evidence, case, db)
    # a forged checkpoint after the run ended
    case = _copy(done_case, tmp_path / "b")

    def forge(es):
        return es + [dict(es[1], event="match-checkpoint")]

    _rechain(case, forge)
    assert any("a checkpoint outside a run" in p for p in Case(case).verify().problems)


def test_audit_entries_after_the_noted_head_cannot_re_record_case_files(done_case, tmp_path):
    """A forged report entry after the noted head that re-records results.jsonl is caught, as is a row changed
    after the head (not only noted)."""
    import hashlib

    case = _copy(done_case, tmp_path)
    head = done_case[1].head
    lines = (case / "results.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    lines[0] = json.dumps(row | {"pce": 812.5, "decision": "consistent"})
    data = ("\n".join(lines) + "\n").encode()
    (case / "results.jsonl").write_bytes(data)

    def forge(es):
        files = {"results.jsonl": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
        return es + [{"event": "report", "utc": es[-1]["utc"], "report_files": files}]

    _rechain(case, forge)
    new_head = json.loads((case / "audit.jsonl").read_text().splitlines()[-2])["hash"]
    assert new_head == head  # the forger left the noted head in place
    v = Case(case).verify(head=head)
    assert any("which a report never writes" in p for p in v.problems), v.problems
    assert any(p.startswith("results.jsonl: changed after the noted head") for p in v.problems), v.problems


def test_rows_that_do_not_follow_from_their_scores_are_caught(done_case, tmp_path):
    case = _copy(done_case, tmp_path)
    with open(case / "results.jsonl", "a") as f:
        f.write(json.dumps(_forged_row(case) | {"image": "/elsewhere/../" + _forged_row(case)["image"].lstrip("/"),
                                                "pce": 2.1}) + "\n")
    from spncli.casefile import row_problems

    problems = row_problems(Case(case).rows())
    assert any("says 'consistent' at PCE 2.1" in p for p in problems), problems
    assert any("gives p_fa 0" in p for p in problems), problems
    assert any("2 rows for" in p for p in problems), problems  # the same image spelled with "..": one key
    assert not row_problems(Case(done_case[0]).rows())  # the tool's own rows follow from their scores


def test_case_files_of_the_wrong_shape_are_one_problem_each_not_a_crash(done_case, tmp_path):
    case = _copy(done_case, tmp_path)
    _rechain(case, lambda es: [{k: v for k, v in e.items() if k != "utc"} if i == 1 else e
                               for i, e in enumerate(es)])  # fmt: skip
    assert any("malformed (an event and a UTC time expected)" in p for p in Case(case).verify().problems)
    case = _copy(done_case, tmp_path / "b")
    _rechain(case, lambda es: es[:-1] + [dict(es[-1], files="x")])
    assert any("malformed files" in p for p in Case(case).verify().problems)
    for bad in ("[1, 2]", "5", '{"image": 3}'):
        case = _copy(done_case, tmp_path / f"c{len(bad)}")
        with open(case / "results.jsonl", "a") as f:
            f.write(bad + "\n")
        assert any("results.jsonl line" in p for p in Case(case).verify().problems)
    case = _copy(done_case, tmp_path / "d")
    (case / "manifest.json").write_text('{"inputs": ["x", {"path": null}]}')
    problems = Case(case).verify().problems
    assert any("manifest.json: input 0 is not an input record" in p for p in problems), problems


def test_evidence_changed_or_made_a_fifo_is_caught_without_hanging(evidence, db, tmp_path):
    ev = tmp_path / "ev"
    shutil.copytree(evidence, ev)
    case = tmp_path / "case"
    _run(ev, case, db)
    manifest = json.loads((case / "manifest.json").read_text())
    broken = next(i for i in manifest["inputs"] if i["path"].endswith("broken.jpg"))
    assert broken["status"] == "error" and len(broken["sha256"]) == 64  # a failed input is hashed too
    (ev / "broken.jpg").write_bytes(b"something else")
    (ev / "CAM-A_1.jpg").unlink()
    os.mkfifo(ev / "CAM-A_1.jpg")
    problems = Case(case).verify().problems  # returns: the FIFO is never opened for reading
    assert any(p.startswith(f"{ev / 'broken.jpg'}: changed") for p in problems), problems
    assert any(p.startswith(f"{ev / 'CAM-A_1.jpg'}: not a regular file") for p in problems), problems
    with pytest.raises(CaseError, match="the evidence changed since the case scored it"):
        _run(ev, case, db)


def test_a_file_the_case_scored_with_other_bytes_is_refused_not_scored_twice(evidence, db, tmp_path, monkeypatch):
    """After a kill (so that the manifest does not list it yet), a resume re-hashes the inputs its rows name and
    refuses changed evidence; a file that changes after that check is an error, not a second set of rows."""
    ev = tmp_path / "ev"
    shutil.copytree(evidence, ev)
    case = tmp_path / "case"
    _run(ev, case, db)
    _rechain(case, lambda es: es[:-1])  # killed before its end entry: its rows stand on the checkpoints
    (case / "manifest.json").write_text("{}")  # regenerated at a run's end: free after a kill
    img = ev / "CAM-B_0.jpg"
    original = img.read_bytes()
    img.write_bytes(original[:-2] + b"\x00\xff\xd9")
    with pytest.raises(CaseError, match=f"evidence changed since the case scored it: {img}: changed"):
        _run(ev, case, db)
    img.write_bytes(original)
    import spncli.casework as cw

    real_check = cw._check_scored_inputs

    def check_then_change(c, protected=None):  # the file changes between the resume's check and its reading
        real_check(c, protected)
        img.write_bytes(original[:-2] + b"\x00\xff\xd9")

    monkeypatch.setattr(cw, "_check_scored_inputs", check_then_change)
    summary = _run(ev, case, db)
    errors = {Path(e["file"]).name: e["reason"] for e in Case(case).error_rows()}
    assert errors["CAM-B_0.jpg"].startswith("changed since the case scored it") and summary.errors == 2
    rows = [r for r in Case(case).rows() if r["image"] == str(img)]
    assert len(rows) == 2  # its first rows only


def test_report_describes_only_the_fingerprints_the_case_scored(evidence, db, synth_case, tmp_path):
    from spncli.report import build_report

    own = tmp_path / "db" / "cams.h5"
    own.parent.mkdir()
    store = FingerprintStore(own)
    for cam in FingerprintStore(db).cameras():
        fp = FingerprintStore(db).load(cam)
        store.add(cam, fp.k, fp.meta)
    matcher = Matcher((store.load(n) for n in store.cameras()), MatchSettings())
    case = tmp_path / "case"
    run_case([evidence], case, matcher, db=own, db_sha=store.file_sha256(), cluster=False, handle_signals=False)
    assert "changed since the case was scored" not in build_report(case)
    other = store.load("CAM-B")
    store.add("CAM-A", other.k, other.meta, replace=True)  # another camera's fingerprint under the name
    page = build_report(case)
    assert "The fingerprint database changed since the case was scored" in page
    assert "is not the one the case scored" in page
    res = CliRunner().invoke(app, ["report", str(case)])
    assert res.exit_code == 0, res.output
    assert "the fingerprint database changed since the case was scored" in res.stderr
    assert "CAM-A: the database's fingerprint (SHA-256" in res.stderr and "is not the one the case scored" in res.stderr


def test_forged_run_entries_after_the_head_do_not_cover_removed_or_swapped_evidence(evidence, db, tmp_path):
    """Review finding: appending a made-up match-start/match-completed after the noted head let a swapped image
    (manifest updated) and a case emptied of its results pass verify --head."""
    ev = tmp_path / "ev"
    shutil.copytree(evidence, ev)
    case = tmp_path / "case"
    head = _run(ev, case, db).head

    def forged_run(es):
        return es + [{"event": "match-start", "utc": es[-1]["utc"]},
                     {"event": "match-completed", "utc": es[-1]["utc"], "files": Case(case).files()}]  # fmt: skip

    (ev / "CAM-A_0.jpg").write_bytes((ev / "CAM-B_1.jpg").read_bytes())
    manifest = json.loads((case / "manifest.json").read_text())
    for item in manifest["inputs"]:
        if item["path"].endswith("CAM-A_0.jpg"):
            item["sha256"] = hashlib.sha256((ev / "CAM-A_0.jpg").read_bytes()).hexdigest()
    (case / "manifest.json").write_text(json.dumps(manifest))
    _rechain(case, forged_run)
    problems = Case(case).verify(head=head).problems
    assert any(p.startswith(f"{ev / 'CAM-A_0.jpg'}: changed") for p in problems), problems  # against the rows
    assert any("recorded as scored with SHA-256" in p for p in problems), problems
    # a case emptied of its results and pictures
    case2 = tmp_path / "case2"
    shutil.copytree(evidence, tmp_path / "ev2")
    head = _run(tmp_path / "ev2", case2, db).head
    (case2 / "results.jsonl").unlink()
    shutil.rmtree(case2 / "artifacts")
    (case2 / "results.csv").write_text("image\n")
    case = case2
    _rechain(case2, forged_run)
    problems = Case(case2).verify(head=head).problems
    assert any(p.startswith("results.jsonl: missing (recorded at the noted head") for p in problems), problems
    assert any(p.startswith("artifacts/") and "missing" in p for p in problems), problems


def test_a_case_of_saved_residuals_resumes_and_verifies(evidence, db, tmp_path):
    """Review finding: a scored .npy was recorded with its source image's SHA-256, so every later run was refused
    as 'evidence changed'."""
    from spncli.jobs import ExtractJob

    ev = tmp_path / "ev"
    ev.mkdir()
    ExtractJob(ev)(str(evidence / "CAM-A_0.jpg"))  # a residual and its provenance JSON, as spn extract writes them
    case = tmp_path / "case"
    first = _run(ev, case, db)
    assert first.scored == 1
    item = json.loads((case / "manifest.json").read_text())["inputs"][0]
    assert item["sha256"] == hashlib.sha256(Path(item["path"]).read_bytes()).hexdigest() and item["source_sha256"]
    assert Case(case).verify(head=first.head).ok
    again = _run(ev, case, db)
    assert again.skipped == 1 and Case(case).verify(head=again.head).ok


def test_a_malformed_line_appended_after_a_kill_is_dropped_not_fatal(done_case, evidence, db, tmp_path):
    case = _copy(done_case, tmp_path)
    _rechain(case, lambda es: es[:-1])
    with open(case / "results.jsonl", "a") as f:
        f.write("[1, 2]\n")
    notices = []
    summary = _run(evidence, case, db, on_notice=notices.append)
    assert summary.status == "completed" and any(n.startswith("dropped 1 row(s)") for n in notices), notices
    assert Case(case).verify(head=summary.head).ok


def test_a_borderline_pce_rounded_to_the_threshold_is_a_possible_row():
    from spncli.casefile import row_problems

    row = {"image": "/x.jpg", "sha256": "0" * 64, "camera": "c", "threshold": 60.0, "pce": 60.0, "n_shifts": 1}
    assert row_problems([row | {"decision": "consistent"}]) == []  # 60.00003 rounds to 60.0 and is consistent
    assert row_problems([row | {"decision": "not consistent"}]) == []
    assert row_problems([row | {"pce": 59.9, "decision": "consistent"}])


def test_deep_json_wrong_typed_start_entries_and_grown_non_images_are_problems(done_case, evidence, db, tmp_path):
    case = _copy(done_case, tmp_path)
    with open(case / "audit.jsonl", "a") as f:
        f.write("[" * 100000 + "]" * 100000 + "\n")
    assert any("not an audit entry" in p for p in Case(case).verify().problems)  # no RecursionError
    case = _copy(done_case, tmp_path / "b")
    _rechain(case, lambda es: [dict(es[0], parameters="x", evidence="/work"), *es[1:]])
    assert any("malformed (parameters an object" in p for p in Case(case).verify().problems)
    with pytest.raises(CaseError, match="malformed"):
        _run(evidence, case, db)  # refused in one line, not an AttributeError
    case = _copy(done_case, tmp_path / "c")  # a manifest whose threshold was edited
    manifest = json.loads((case / "manifest.json").read_text())
    manifest["parameters"]["threshold"] = 10
    (case / "manifest.json").write_text(json.dumps(manifest))
    _rechain(case, lambda es: es[:-1] + [dict(es[-1], files=Case(case).files())])
    assert any(p.startswith("manifest.json: parameters") for p in Case(case).verify().problems)
    # a file that is not an image is listed with its size, and a changed size is caught
    ev = tmp_path / "ev"
    shutil.copytree(evidence, ev)
    (ev / "notes.txt").write_text("examiner's notes")
    head = _run(ev, tmp_path / "d", db).head
    listed = [i for i in json.loads((tmp_path / "d" / "manifest.json").read_text())["inputs"]
              if i["path"].endswith("notes.txt")]  # fmt: skip
    assert listed and listed[0]["size_bytes"] == len("examiner's notes") and listed[0]["sha256"] is None
    with open(ev / "notes.txt", "a") as f:
        f.write(" and more")
    assert any("notes.txt: size now" in p for p in Case(tmp_path / "d").verify(head=head).problems)


def test_a_results_csv_written_with_an_earlier_versions_columns_still_verifies(done_case, tmp_path):
    """Review finding: adding a CSV column made every earlier case fail verify. The file is checked with the
    columns its own header names; a changed value still fails."""
    import csv as csvmod

    case = _copy(done_case, tmp_path)
    rows = list(csvmod.DictReader(io.StringIO((case / "results.csv").read_text())))
    older = [c for c in rows[0] if c != "decoder_warnings"]
    buf = io.StringIO()
    writer = csvmod.DictWriter(buf, fieldnames=older, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (case / "results.csv").write_text(buf.getvalue())
    _rechain(case, lambda es: es[:-1] + [dict(es[-1], files=Case(case).files())])
    assert Case(case).verify().ok, Case(case).verify().problems
    (case / "results.csv").write_text(buf.getvalue().replace("consistent", "inconsistent", 1))
    _rechain(case, lambda es: es[:-1] + [dict(es[-1], files=Case(case).files())])
    assert "results.csv: not the rows of results.jsonl (a run writes it from them)" in Case(case).verify().problems
