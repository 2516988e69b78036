"""Prepare the data the GPU run trains and validates restoration v2 with (run on the CPU machine, once).

The GPU machine has no ``../shared`` and takes at most 64 MiB of ignored folders along with the
checkout, so this writes a compact copy into ``.gpu/data`` (list ``.gpu`` in ``.git/info/exclude``)::

    .gpu/data/cbsd68/                    CBSD68 (content; 18 MB)
    .gpu/data/praktica-1024/             the 5 Praktica fingerprints, centre 1024x1024 (real PRNU)
    .gpu/data/fp-train/<device>.png      fingerprints of the Dresden _0 units from their flat-fields,
                                         the full-height strip LEFT of the centre 1024x1024 only
    .gpu/data/dresden0/nat-jpg/          the Dresden _0 naturals (content, and validation probes)
    .gpu/data/dresden0/ff-jpg/<device>.png  fingerprints of the _0 units at the centre 1024x1024
                                         (validation: spn train --validation .gpu/data/dresden0)

No file of a report unit (``_1``) is copied or used: :func:`spncli.camerasim.training_folder`
leaves them out and :func:`spncli.camerasim.check_training_file` refuses them.

Usage: PYTHONPATH=$PWD python benchmarks/prepare_gpu_data.py [--shared ../shared/data] [--out .gpu/data]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2

from spncli.camerasim import check_training_file, training_folder, write_flat_fingerprints

VALIDATION_CROP = (1024, 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path(".gpu/data"))
    args = ap.parse_args()
    dresden, out = args.shared / "dresden-nikon", args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "cbsd68").mkdir(exist_ok=True)
    for png in sorted((args.shared / "cbsd68").glob("*.png")):  # files only: the copies stay writable
        shutil.copyfile(png, out / "cbsd68" / png.name)
    (out / "praktica-1024").mkdir(exist_ok=True)
    for png in sorted((args.shared / "praktica-fingerprints").glob("*.png")):
        k = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
        r, c = (k.shape[0] - 1024) // 2, (k.shape[1] - 1024) // 2
        cv2.imwrite(str(out / "praktica-1024" / png.name), k[r : r + 1024, c : c + 1024])
    naturals, excluded = training_folder(dresden / "nat-jpg")
    (out / "dresden0" / "nat-jpg").mkdir(parents=True, exist_ok=True)
    for p in naturals:
        if p.stem.rsplit("_", 1)[0].endswith("_0"):
            shutil.copyfile(check_training_file(p), out / "dresden0" / "nat-jpg" / p.name)
    print(f"left out {len(excluded)} report-unit natural(s): {', '.join(p.name for p in excluded)}")
    write_flat_fingerprints(dresden / "ff-jpg", out / "fp-train", "_0", exclude_centre=VALIDATION_CROP)
    write_flat_fingerprints(dresden / "ff-jpg", out / "dresden0" / "ff-jpg", "_0", crop=VALIDATION_CROP)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
