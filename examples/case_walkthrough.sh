#!/usr/bin/env bash
# A whole case on generated data: cameras, fingerprints, a "seized" folder, a parallel case, verify, report.
# Usage: bash examples/case_walkthrough.sh [WORK_DIR]   (needs `spn` on PATH; takes about a minute)
set -euo pipefail
work=${1:-/tmp/spn-walkthrough}
rm -rf "$work"
spn demo --out "$work/demo" --cameras 3 --probes 3 -f csv > "$work.demo.csv"    # evidence + cameras.h5
spn db list --db "$work/demo/cameras.h5"
spn quality "$work"/demo/evidence/probes/*.jpg
spn degrade "$work/demo/evidence/probes" --out "$work/degraded" -q 70 -q 40      # messaging-app copies
spn match "$work/demo/evidence/probes" "$work/degraded" --db "$work/demo/cameras.h5" \
    --case "$work/case" --workers 2 --examiner "Example Examiner" --case-id EX-1
spn case verify "$work/case"
spn report "$work/case"
echo "open $work/case/report.html"
