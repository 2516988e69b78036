"""``spn demo``: a complete small case from generated cameras, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..evidence import load_image
from ..identify import Matcher, MatchSettings, build_fingerprint, gather_inputs
from ..provenance import atomic_write_bytes, atomic_write_json, tool_info, utc_now
from ..store import FingerprintStore
from ..synthetic import dead_leaves, encode_jpeg, expose, flat_field, synthetic_prnu
from ._app import app
from ._common import Format, crop_option, err
from .match import render_matches


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the generated case.")] = Path("spn-demo"),
    cameras: Annotated[int, typer.Option(min=2, max=10, help="Number of synthetic cameras.")] = 3,
    flats: Annotated[int, typer.Option(min=2, help="Flat-field images per camera.")] = 8,
    probes: Annotated[int, typer.Option(min=1, help="Natural-like probe images per camera.")] = 2,
    size: Annotated[str, typer.Option(help="Image size HxW.")] = "480x640",
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of the generated images.")] = 92,
    seed: Annotated[int, typer.Option(help="Random seed (recorded).")] = 2026,
    format: Annotated[Format, typer.Option("--format", "-f", help="Report format: table, json or csv.")] = Format.table,
):
    """Generate synthetic cameras, fingerprint them into an HDF5 database and match probe images.

    Writes OUT/evidence/ (generated JPEGs), OUT/cameras.h5 and OUT/demo.json, then
    prints the match report: each probe should be consistent with its own camera only.
    """
    shape = crop_option(size)
    rng = np.random.default_rng(seed)
    evidence = out / "evidence"
    names = [f"SYN-{i + 1:02d}" for i in range(cameras)]
    err.print(f"generating {cameras} cameras x ({flats} flat-fields + {probes} probes) at {shape[1]}x{shape[0]} ...")
    for name in names:
        k = synthetic_prnu(shape, rng, std=0.005)
        for j in range(flats):
            img = expose(flat_field(shape, rng, level=rng.uniform(150, 200)), k, rng)
            atomic_write_bytes(evidence / "flats" / name / f"{name}_flat_{j:02d}.jpg", encode_jpeg(img, quality))
        for j in range(probes):
            img = expose(dead_leaves(shape, rng), k, rng)
            atomic_write_bytes(evidence / "probes" / f"{name}_probe_{j:02d}.jpg", encode_jpeg(img, quality))
    db = out / "cameras.h5"
    db.unlink(missing_ok=True)
    store = FingerprintStore(db)
    for name in names:
        kk, meta = build_fingerprint(gather_inputs([evidence / "flats" / name]), name)
        store.add(name, kk, meta)
        err.print(f"fingerprinted {name} from {meta['image_count']} flat-fields -> {db}")
    matcher = Matcher([store.load(n) for n in names], MatchSettings())
    rows = []
    for path in gather_inputs([evidence / "probes"]):
        rows.extend(matcher.match(load_image(path)))
    hits = sum(r["decision"] == "consistent" and Path(r["image"]).name.startswith(r["camera"]) for r in rows)
    false = sum(r["decision"] == "consistent" and not Path(r["image"]).name.startswith(r["camera"]) for r in rows)
    atomic_write_json(
        out / "demo.json",
        {
            "seed": seed,
            "cameras": names,
            "size": list(shape),
            "quality": quality,
            "results": rows,
            "created_utc": utc_now(),
            **tool_info(),
        },
    )
    render_matches(rows, format, 60.0)
    err.print(
        f"{hits}/{len(names) * probes} probes consistent with their own camera, {false} false matches; case in {out}"
    )
    if format is Format.table:
        err.print(json.dumps({"true_matches": hits, "false_matches": false}))
