#!/usr/bin/env bash
# Everything `spn` needs a GPU for, in one run of at most 9 minutes (issue 7, item 7).
#
# Stages (each under its own time limit; a stage that fails is logged and the run goes on):
#   1. environment: GPU, driver, torch, CUDA                                        -> figures.json
#   2. CUDA tests: fp16/bf16 vs fp32 restoration agreement (pytest, and the figures)  -> figures.json
#   3. training: `spn train` on the GPU with the v1 recipe, from data carried along   -> ema.pt, train_log.jsonl
#   4. 48 MP restore: seconds and peak GPU memory, fp16 and fp32                       -> figures.json
#      NOTE: the network's input is still the CLASSIC residual (spncli.camerasim.simulate makes classic
#      residuals; spncli.networks.RestorationNet has no survival-map input yet), so this trains what exists:
#      the v1 generator on the classic residual. It does not yet train on the compression-aware residual.
#   5. if benchmarks/gpu_classic.py exists: python benchmarks/gpu_classic.py --out $OUT/classic
# Writes into $OUT (at most 5 files of its own, so that the 8 files that come back leave room for
# gpu_classic.py): gpu_run.log, figures.json, ema.pt, train_log.jsonl, training.png (loss curves, OpenCV).
#
# Before the run, on the CPU machine (the GPU machine has no network and no ../shared):
#   ../shared/gpu/wheels.sh .gpu/wheels jpeglib pillow-heif        # PyWavelets, piexif, jpeglib, pillow-heif
#   mkdir -p .gpu/data && cp -r ../shared/data/cbsd68 ../shared/data/praktica-fingerprints .gpu/data/
#   (.gpu/ is ignored by .gitignore; carry it along: run(carry=[".gpu"]), 64 MiB at most)
# Then on the GPU machine:   bash benchmarks/gpu_run.sh            ($OUT set by the machine)
# Smoke test on a CPU (a few steps, small image, nothing installed):
#   OUT=/tmp/gpu-smoke SPN_GPU_SMOKE=1 PY=/work/venv/bin/python bash benchmarks/gpu_run.sh
#
# Environment: OUT (required), PY (python3), SPN_GPU_STEPS (training steps, 3000), SPN_GPU_TRAIN_SECONDS
# (time limit of the training stage, 240), SPN_GPU_BIG (rows x cols of the big restore, 6000x8000),
# SPN_GPU_DATA (.gpu/data), SPN_GPU_SMOKE (1: CPU smoke test: 3 steps, 512x768, device cpu).
set -uo pipefail

OUT=${OUT:?set OUT to the output folder}
PY=${PY:-python3}
SMOKE=${SPN_GPU_SMOKE:-0}
DATA=${SPN_GPU_DATA:-.gpu/data}
if [[ $SMOKE == 1 ]]; then
    STEPS=${SPN_GPU_STEPS:-3}; BIG=${SPN_GPU_BIG:-512x768}; DEVICE=cpu; TRAIN_SECONDS=${SPN_GPU_TRAIN_SECONDS:-240}
else
    STEPS=${SPN_GPU_STEPS:-3000}; BIG=${SPN_GPU_BIG:-6000x8000}; DEVICE=cuda; TRAIN_SECONDS=${SPN_GPU_TRAIN_SECONDS:-240}
fi
BUDGET=${SPN_GPU_BUDGET_SECONDS:-530}  # the whole run; the machine allows 9 minutes
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spn-gpu-run.XXXXXX")
exec > >(tee -a "$OUT/gpu_run.log") 2>&1

left() { echo $((BUDGET - ($(date +%s) - START))); }
stage() {  # stage NAME SECONDS COMMAND...: run under a time limit shortened to what the budget leaves
    local name=$1 limit=$2; shift 2
    local l; l=$(left)
    (( l < limit )) && limit=$l
    if (( limit < 15 )); then echo "== $name: SKIPPED, ${l}s of the budget left"; return 0; fi
    echo "== $name (limit ${limit}s) $(date -u +%H:%M:%SZ)"
    timeout --signal=TERM --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "== $name: rc=$rc after $(( $(date +%s) - START ))s of the run"
    echo "{\"stage\": \"$name\", \"rc\": $rc, \"limit_s\": $limit}" >> "$WORK/stages.jsonl"
    return 0
}

echo "spn GPU run $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse HEAD 2>/dev/null || echo unknown), smoke=$SMOKE"
if [[ $SMOKE != 1 && -d .gpu/wheels ]]; then
    "$PY" -m pip install -q --no-index --no-deps .gpu/wheels/*.whl || echo "wheel install failed (see above)"
fi

# 1. environment --------------------------------------------------------------------------------------
stage environment 60 "$PY" - "$WORK/env.json" <<'EOF'
import json, platform, subprocess, sys
import torch
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
       "cuda": torch.version.cuda}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1), "capability": [p.major, p.minor]}
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
import spncli
env["spn_version"] = spncli.__version__
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env))
EOF

# 2. CUDA tests: fp16/bf16 vs fp32 ---------------------------------------------------------------------
if [[ $SMOKE == 1 ]]; then
    echo "== cuda tests: smoke run on CPU, the CUDA test is skipped by pytest (no CUDA)"
fi
stage cuda-tests 100 "$PY" -m pytest -q -p no:cacheprovider tests/test_restoration.py \
    -k "cuda or tiled_equals or weights_checksum" -rs
[[ $SMOKE == 1 ]] && AGREE=256x384 || AGREE=1024x1536
stage precision-agreement 80 "$PY" - "$WORK/agreement.json" "$DEVICE" "$AGREE" <<'EOF'
import json, sys, time
import numpy as np, torch
from spncli.evidence import decode
from spncli.restoration import DEFAULT_MODEL, load_restorer
from spncli.synthetic import dead_leaves, encode_jpeg, expose, synthetic_prnu
device, shape = sys.argv[2], tuple(map(int, sys.argv[3].split("x")))
rng = np.random.default_rng(3)
img = expose(dead_leaves(shape, rng), synthetic_prnu(shape, rng), rng)
out = {}
for q in (50, 30):
    ev = decode(encode_jpeg(img, q), f"gpu-q{q}.jpg")
    r = load_restorer(DEFAULT_MODEL, device)
    precisions = ("fp32", "fp16", "bf16") if device == "cuda" else ("fp32",)
    res = {p: r.restore(ev, precision=p, tile=512)[0] for p in precisions}
    for p in precisions[1:]:
        a, b = res[p].ravel().astype(np.float64), res["fp32"].ravel().astype(np.float64)
        out[f"q{q}_{p}_vs_fp32"] = {"corr": float(np.corrcoef(a, b)[0, 1]),
                                    "max_abs_diff": float(np.abs(a - b).max()), "rms_fp32": float(b.std())}
out |= {"device": device, "size": sys.argv[3], "tile": 512}
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(json.dumps(out))
EOF

# 3. training ------------------------------------------------------------------------------------------
CONTENT=$DATA/cbsd68; PRNU=$DATA/praktica-fingerprints
[[ -d $CONTENT ]] || CONTENT=../shared/data/cbsd68
[[ -d $PRNU ]] || PRNU=../shared/data/praktica-fingerprints
[[ -d $CONTENT && -d $PRNU ]] || echo "warning: training data not found ($DATA or ../shared/data): dead leaves only"
sed -e "s#^content = .*#content = [\"$CONTENT\"]#" -e "s#^prnu = .*#prnu = \"$PRNU\"#" \
    -e "s#^device = .*#device = \"$DEVICE\"#" -e "s#^threads = .*#threads = 8#" \
    -e "s#^checkpoint_every = .*#checkpoint_every = 100#" models/train-v1.toml > "$WORK/train-gpu.toml"
echo "training config (models/train-v1.toml with paths, device, threads and checkpoints for this machine):"
cat "$WORK/train-gpu.toml"
stage train "$TRAIN_SECONDS" "$PY" -m spncli train --config "$WORK/train-gpu.toml" --out "$WORK/train" --steps "$STEPS"
[[ -f $WORK/train/ema.pt ]] && cp "$WORK/train/ema.pt" "$OUT/ema.pt"
[[ -f $WORK/train/log.jsonl ]] && cp "$WORK/train/log.jsonl" "$OUT/train_log.jsonl"

# 4. 48 MP restore: time and memory, one precision per fresh process (bf16 agreement: stage 2) -----------------------------------
for precision in fp16 fp32; do
    [[ $DEVICE == cpu && $precision != fp32 ]] && continue
    stage "restore-$BIG-$precision" 60 "$PY" - "$BIG" "$DEVICE" "$precision" "$WORK/big-$precision.json" <<'EOF'
import json, resource, sys, time
import cv2, numpy as np, torch
from spncli.evidence import decode
from spncli.restoration import load_restorer
from spncli.synthetic import encode_jpeg, synthetic_prnu
rows, cols = map(int, sys.argv[1].split("x")); device, precision = sys.argv[2], sys.argv[3]
rng = np.random.default_rng(0)
img = cv2.resize(rng.uniform(60, 200, (rows // 8, cols // 8, 3)).astype(np.float32), (cols, rows),
                 interpolation=cv2.INTER_CUBIC)
img = np.clip(img * (1 + synthetic_prnu((rows, cols), rng)[:, :, None]) + rng.normal(0, 2, img.shape), 0, 255)
ev = decode(encode_jpeg(img.astype(np.uint8), 30), "big.jpg")  # Q30: the network runs
del img
r = load_restorer(device=device)
if device == "cuda":
    torch.cuda.reset_peak_memory_stats(); torch.cuda.synchronize()
t = time.perf_counter()
out, info = r.restore(ev, tile=1024, precision=precision)
if device == "cuda":
    torch.cuda.synchronize()
res = {"size": sys.argv[1], "megapixels": rows * cols / 1e6, "device": device, "precision": info["precision"],
       "tile": 1024, "network_applied": info["network_applied"], "seconds": round(time.perf_counter() - t, 2),
       "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
if device == "cuda":
    res["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
json.dump(res, open(sys.argv[4], "w"))
print(json.dumps(res))
EOF
done

# 5. the classic residual on the GPU (another helper's script), when present -------------------------------
if [[ -f benchmarks/gpu_classic.py ]]; then
    stage gpu-classic 120 "$PY" benchmarks/gpu_classic.py --out "$OUT/classic"
else
    echo "== gpu-classic: benchmarks/gpu_classic.py absent, not run"
fi

# figures: one JSON, one training plot ------------------------------------------------------------------
"$PY" - "$WORK" "$OUT" "$STEPS" <<'EOF'
import hashlib, json, sys
from pathlib import Path
import torch
work, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
last = work / "train" / "last.pt"
checkpoint_step = int(torch.load(last, map_location="cpu", weights_only=True)["step"]) if last.exists() else 0
read = lambda p: json.loads(p.read_text()) if p.exists() else None
log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()] if (out / "train_log.jsonl").exists() else []
points = [r for r in log if "step" in r and "corr" in r]
fig = {
    "environment": read(work / "env.json"),
    "precision_agreement": read(work / "agreement.json"),
    "big_restore": [read(p) for p in sorted(work.glob("big-*.json"))],
    "training": {
        "config": (work / "train-gpu.toml").read_text() if (work / "train-gpu.toml").exists() else None,
        "steps_asked": steps,
        "steps_done": checkpoint_step,  # of the last checkpoint, which ema.pt is
        "seconds": points[-1]["seconds"] if points else None,
        "last": points[-1] if points else None,
        "input_residual": "classic (the network cannot take the compression-aware residual yet)",
        "ema_sha256": hashlib.sha256((out / "ema.pt").read_bytes()).hexdigest() if (out / "ema.pt").exists() else None,
    },
    "stages": [json.loads(l) for l in (work / "stages.jsonl").read_text().splitlines()],
}
(out / "figures.json").write_text(json.dumps(fig, indent=1))
if points:  # loss curves drawn with OpenCV (matplotlib is not on every machine)
    import cv2, numpy as np
    panels = []
    for key in ("corr", "l1", "d"):
        img = np.full((240, 360, 3), 255, np.uint8)
        xs = np.array([p["step"] for p in points], float); ys = np.array([p[key] for p in points], float)
        x = 30 + 320 * (xs - xs.min()) / max(np.ptp(xs), 1); y = 210 - 180 * (ys - ys.min()) / max(np.ptp(ys), 1e-12)
        cv2.polylines(img, [np.stack([x, y], 1).astype(np.int32)], False, (200, 60, 0), 2)
        cv2.putText(img, f"{key}: {ys.min():.4g}..{ys.max():.4g}", (30, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        cv2.putText(img, f"steps {int(xs.min())}..{int(xs.max())}", (30, 232), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        panels.append(img)
    cv2.imwrite(str(out / "training.png"), np.hstack(panels))
else:
    print("no logged training step (the log has a line every 50 steps): no training.png")
print(json.dumps({k: v for k, v in fig.items() if k != "training"} | {"training_steps": fig["training"]["steps_done"]}))
EOF
rm -rf "$WORK"
echo "done in $(( $(date +%s) - START ))s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
