"""Shared fixtures: the shared Dresden data (skipped with a reason where absent), CLI runner, synthetic JPEGs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spncli.synthetic import dead_leaves, encode_jpeg, expose, flat_field, synthetic_prnu

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPN_SHARED_DATA", ROOT.parent / "shared" / "data"))
DRESDEN = SHARED / "dresden-nikon"
REFERENCE = ROOT.parent / "shared" / "reference"


def camera_of(path: Path) -> str:
    """Dresden device name: everything before the last underscore."""
    return path.stem.rsplit("_", 1)[0]


@pytest.fixture(scope="session")
def dresden() -> Path:
    if not (DRESDEN / "ff-jpg").is_dir():
        pytest.skip(f"Dresden data not found at {DRESDEN} (set SPN_SHARED_DATA or place ../shared/data)")
    return DRESDEN


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def synth_case(tmp_path_factory):
    """Two synthetic cameras: 6 flat-fields and 2 dead-leaves probes each, JPEG Q92, 256x384.

    Returns a dict with the evidence folder, per-camera flat folders, probe
    paths and the true PRNU factors.
    """
    rng = np.random.default_rng(12345)
    root = tmp_path_factory.mktemp("evidence")
    shape = (256, 384)
    case = {"root": root, "flats": {}, "probes": {}, "k": {}}
    for cam in ("CAM-A", "CAM-B"):
        k = synthetic_prnu(shape, rng, std=0.01)
        case["k"][cam] = k
        d = root / "flats" / cam
        d.mkdir(parents=True)
        case["flats"][cam] = d
        for i in range(6):
            (d / f"{cam}_flat_{i}.jpg").write_bytes(encode_jpeg(expose(flat_field(shape, rng), k, rng), 92))
        probes = []
        for i in range(2):
            p = root / "probes" / f"{cam}_probe_{i}.jpg"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(encode_jpeg(expose(dead_leaves(shape, rng), k, rng), 92))
            probes.append(p)
        case["probes"][cam] = probes
    return case
