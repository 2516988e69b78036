#!/usr/bin/env bash
# Everything `spn` needs a GPU for, in one run of at most 9 minutes (issue 7, item 7).
#
# Stages (each under its own time limit; a stage that fails is logged and the run goes on):
#   1. environment: GPU, driver, torch, CUDA                                        -> figures.json
#   2. CUDA tests: fp16/bf16 vs fp32 restoration agreement (pytest, and the figures)  -> figures.json
#   3. training: restoration v2 (models/train-v2.toml) and its ablation without the GAN (adversarial_weight=0),
#      side by side on the one GPU (each with half the CPU cores simulating pairs), each stopped by max_seconds,
#      validated on the selection units _0 (centre 1024, Q50/30, per unit)         -> v2.pt, v2-noadv.pt, train_log.jsonl
#      The v2 input is the compression-aware residual and the survival map (spncli.conditioning.network_inputs).
#   4. 48 MP restore: seconds and peak GPU memory, fp16 and fp32                       -> figures.json
#   5. the classic pipeline on CUDA: gpu_classic.py run (agreement with numpy, decisions, 12 MP x 50 cameras images/s)
#                                                                                      -> classic.json
# Writes into $OUT (at most 5 files of its own, so that the 8 files that come back leave room for
# gpu_classic.py): gpu_run.log, figures.json (with both model cards and the loss curves' points), v2.pt,
# v2-noadv.pt (EMA or best weights; `write_model_card` makes their cards again), train_log.jsonl (v2).
# The weights are candidates: they replace nothing; they ship only if they win on the selection split.
#
# Before the run, on the CPU machine (the GPU machine has no network and no ../shared):
#   ../shared/gpu/wheels.sh .gpu/wheels jpeglib pillow-heif        # PyWavelets, piexif, jpeglib, pillow-heif
#   PYTHONPATH=$PWD python benchmarks/prepare_gpu_data.py   # .gpu/data: CBSD68, Praktica 1024, Dresden _0 only
#   PYTHONPATH=$PWD python benchmarks/gpu_classic.py prepare --data ../shared/data/dresden-nikon \
#       --to .gpu/data/classic --flats 3 --camera Nikon_D70_0 --camera Nikon_D70s_0   # 11 files, 7.9 MiB
#   (.gpu/ is ignored by .gitignore; carry it along: run(carry=[".gpu"]), 64 MiB at most)
# Then on the GPU machine:   bash benchmarks/gpu_run.sh            ($OUT set by the machine)
# Smoke test on a CPU (a few steps, small image, nothing installed):
#   OUT=/tmp/gpu-smoke SPN_GPU_SMOKE=1 PY=/work/venv/bin/python bash benchmarks/gpu_run.sh
#
# Environment: OUT (required), PY (python3), SPN_GPU_STEPS (training steps, models/train-v2.toml's), SPN_GPU_TRAIN_SECONDS
# (time limit of the training stage, 240; each run trains for that less 75 s), SPN_GPU_BIG (rows x cols of the big restore, 6000x8000),
# SPN_GPU_DATA (.gpu/data), SPN_GPU_SMOKE (1: CPU smoke test: 3 steps, 512x768, device cpu).
set -uo pipefail

OUT=${OUT:?set OUT to the output folder}
PY=${PY:-python3}
SMOKE=${SPN_GPU_SMOKE:-0}
DATA=${SPN_GPU_DATA:-.gpu/data}
if [[ $SMOKE == 1 ]]; then
    STEPS=${SPN_GPU_STEPS:-3}; BIG=${SPN_GPU_BIG:-512x768}; DEVICE=cpu; TRAIN_SECONDS=${SPN_GPU_TRAIN_SECONDS:-240}
else
    STEPS=${SPN_GPU_STEPS:-2400}; BIG=${SPN_GPU_BIG:-6000x8000}; DEVICE=cuda; TRAIN_SECONDS=${SPN_GPU_TRAIN_SECONDS:-240}
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
    data = encode_jpeg(img, q)
    ev = decode(data, f"gpu-q{q}.jpg")  # in memory: the v2 network reads the coefficients from `data`
    r = load_restorer(DEFAULT_MODEL, device)
    precisions = ("fp32", "fp16", "bf16") if device == "cuda" else ("fp32",)
    res = {p: r.restore(ev, precision=p, tile=512, data=data)[0] for p in precisions}
    for p in precisions[1:]:
        a, b = res[p].ravel().astype(np.float64), res["fp32"].ravel().astype(np.float64)
        out[f"q{q}_{p}_vs_fp32"] = {"corr": float(np.corrcoef(a, b)[0, 1]),
                                    "max_abs_diff": float(np.abs(a - b).max()), "rms_fp32": float(b.std())}
out |= {"device": device, "size": sys.argv[3], "tile": 512}
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(json.dumps(out))
EOF

# 3. training: v2 and its ablation without the GAN, side by side -----------------------------------------
V2DATA=$DATA
[[ -d $V2DATA/dresden0 ]] || echo "warning: $V2DATA/dresden0 absent (run benchmarks/prepare_gpu_data.py): no validation"
NCPU=$(nproc); WORKERS=$(( NCPU / 2 - 1 )); (( WORKERS < 1 )) && WORKERS=1
[[ $SMOKE == 1 ]] && WORKERS=0
TRAIN_FOR=$(( TRAIN_SECONDS - 75 )); (( TRAIN_FOR < 20 )) && TRAIN_FOR=20
SETS=(--set "device=\"$DEVICE\"" --set threads=1 --set workers=$WORKERS --set checkpoint_every=100
      --set "max_seconds=$TRAIN_FOR" --set "val_every=100000" --set flatfields=\"\"
      --set "content=[\"$V2DATA/cbsd68\", \"$V2DATA/dresden0/nat-jpg\"]"
      --set "prnu=[\"$V2DATA/praktica-1024\", \"$V2DATA/fp-train\"]")
[[ $SMOKE == 1 ]] && SETS+=(--set batch=2 --set patch=64)
VAL=(); [[ -d $V2DATA/dresden0 ]] && VAL=(--validation "$V2DATA/dresden0")
[[ $SMOKE == 1 && -d $V2DATA/dresden0 ]] && VAL+=(--val-crop 1024 --val-quality 30)
echo "training: models/train-v2.toml with ${SETS[*]} ${VAL[*]} --steps $STEPS"
train_v2() {  # NAME [more --set]: one run of models/train-v2.toml into $WORK/NAME
    local name=$1; shift
    "$PY" -m spncli train --config models/train-v2.toml --out "$WORK/$name" --steps "$STEPS" "${SETS[@]}" "$@" \
        "${VAL[@]}" --card-name "$name" > "$WORK/$name.out" 2>&1
    echo "== $name: rc=$?"; tail -n 3 "$WORK/$name.out"
}
train_both() { train_v2 v2 & train_v2 v2-noadv --set adversarial_weight=0 & wait; }
export PY WORK STEPS
stage train "$TRAIN_SECONDS" bash -c "$(declare -p SETS VAL); $(declare -f train_v2 train_both); train_both"
for name in v2 v2-noadv; do
    [[ -f $WORK/$name/$name.pt ]] && cp "$WORK/$name/$name.pt" "$OUT/$name.pt"
done
[[ -f $WORK/v2/log.jsonl ]] && cp "$WORK/v2/log.jsonl" "$OUT/train_log.jsonl"

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
data = encode_jpeg(img.astype(np.uint8), 30)
ev = decode(data, "big.jpg")  # Q30: the network runs; in memory, so its coefficients come from `data`
del img
r = load_restorer(device=device)
if device == "cuda":
    torch.cuda.reset_peak_memory_stats(); torch.cuda.synchronize()
t = time.perf_counter()
out, info = r.restore(ev, tile=1024, precision=precision, data=data)
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
if [[ -d $DATA/classic/dresden-nikon ]]; then  # prepared by: gpu_classic.py prepare ... --to .gpu/data/classic
    SMOKE_FLAG=(); [[ $SMOKE == 1 ]] && SMOKE_FLAG=(--smoke)
    stage gpu-classic 120 "$PY" benchmarks/gpu_classic.py run --data "$DATA/classic/dresden-nikon" \
        --out "$OUT/classic.json" "${SMOKE_FLAG[@]}"
else
    echo "== gpu-classic: $DATA/classic/dresden-nikon absent (run benchmarks/gpu_classic.py prepare), not run"
fi

# figures: one JSON (loss curves as points) ------------------------------------------------------------------
"$PY" - "$WORK" "$OUT" "$STEPS" <<'EOF'
import hashlib, json, sys
from pathlib import Path
import torch
work, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
read = lambda p: json.loads(p.read_text()) if p.exists() else None
def run(name):
    log_file = work / name / "log.jsonl"
    log = [json.loads(l) for l in log_file.read_text().splitlines()] if log_file.exists() else []
    points = [r for r in log if "step" in r and "corr" in r]
    last = work / name / "last.pt"
    return {
        "steps_done": int(torch.load(last, map_location="cpu", weights_only=True)["step"]) if last.exists() else 0,
        "seconds": points[-1]["seconds"] if points else None,
        "curve": [{k: p.get(k) for k in ("step", "seconds", "corr", "l1", "freq", "adv", "d")} for p in points],
        "validations": [r for r in log if "validation" in r],
        "stopped": [r["stopped"] for r in log if "stopped" in r],
        "card": read(work / name / f"{name}.json"),
        "weights_sha256": hashlib.sha256((out / f"{name}.pt").read_bytes()).hexdigest()
        if (out / f"{name}.pt").exists() else None,
    }
fig = {
    "environment": read(work / "env.json"),
    "precision_agreement": read(work / "agreement.json"),
    "big_restore": [read(p) for p in sorted(work.glob("big-*.json"))],
    "training": {
        "config": "models/train-v2.toml (overrides in gpu_run.log)",
        "steps_asked": steps,
        "input_residual": "compression-aware (spncli.conditioning.network_inputs) + survival map, v2",
        "v2": run("v2"),
        "v2_noadv_ablation": run("v2-noadv"),
    },
    "stages": [json.loads(l) for l in (work / "stages.jsonl").read_text().splitlines()],
}
(out / "figures.json").write_text(json.dumps(fig, indent=1))
steps_done = {k: fig["training"][k]["steps_done"] for k in ("v2", "v2_noadv_ablation")}
print(json.dumps({k: v for k, v in fig.items() if k != "training"} | {"training_steps": steps_done}))
EOF
rm -rf "$WORK"
echo "done in $(( $(date +%s) - START ))s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
