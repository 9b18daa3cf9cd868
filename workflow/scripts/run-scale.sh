#!/usr/bin/env bash
# The scale profile (config/scale.yaml) on one GPU, as one script: it checks that JAX sees a
# GPU and that the profile fits it, runs the workflow with accelerator.jobs jobs sharing the
# GPU, and copies the report, its figures and the wall time of every job (the ledger) to
# paper/scale/. Run from anywhere: `workflow/scripts/run-scale.sh`. Needs the project's .venv
# with JAX's CUDA wheels (`make install && .venv/bin/pip install -e .[cuda]`).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${SNGRAD_PYTHON:-.venv/bin/python}
PROFILE=config/scale.yaml

"$PY" - <<'PYEOF'
import sys

import jax

gpus = [d for d in jax.devices() if d.platform == "gpu"]
if not gpus:
    found = ", ".join(sorted({d.platform for d in jax.devices()}))
    sys.exit(f"sngrad: error: the scale profile runs on a GPU; JAX sees only {found} "
             "(install the CUDA wheels: .venv/bin/pip install -e .[cuda])")
print(f"sngrad: GPU: {gpus[0].device_kind} ({len(gpus)} visible; the profile uses one)")
PYEOF
"$PY" -m sngrad config check "$PROFILE"
"$PY" -m sngrad config cost "$PROFILE" --no-calibrate
jobs=$("$PY" -c "from sngrad.config import read_yaml; print(read_yaml('$PROFILE')['accelerator']['jobs'])")

# the jobs share the GPU: none may take most of its memory up front (XLA's default)
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
started=$(date +%s)
"$(dirname "$PY")/snakemake" --cores "$jobs" --configfile "$PROFILE"
finished=$(date +%s)

out=paper/scale
rm -rf "$out.new" && mkdir -p "$out.new/figures"
cp results/scale/report.md "$out.new/report.md"
cp results/scale/figures/*.png "$out.new/figures/"
"$PY" -m sngrad.ledger jobs --profile scale --out "$out.new/jobs.csv"
printf '{"wall_s": %d, "jobs": %d, "device": "%s"}\n' "$((finished - started))" "$jobs" \
  "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" > "$out.new/run.json"
rm -rf "$out" && mv "$out.new" "$out"
echo "sngrad: the scale profile took $((finished - started)) s; its report is $out/report.md"
