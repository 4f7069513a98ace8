#!/usr/bin/env bash
# The GPU figures in one go (about 8.5 minutes on one H200, at most 10): the MLP comparison at
# G = 1, 256, 1024, 4096 (epsweep against the jax and torch loops; about 5 minutes there), and
# Inception-v3 in bfloat16 at 299 x 299 with 8 and 64 settings, full model and frozen base.
#
#   OUT=benchmarks/results/gpu bash benchmarks/gpu.sh
#
# Needs a Python with JAX for CUDA, PyTorch, timm, flax, optax, typer, rich, pillow,
# safetensors and flatbuffers already installed (nothing is downloaded: epsweep itself is
# installed from this checkout without dependencies, or imported from it when that fails).
# A short preflight sweep runs first and ends the script at once when it fails, so that a
# broken environment costs seconds of a lease, not minutes. Every figure lands under $OUT
# with the devices named (nvidia-smi -L); docs/performance.md says how to read them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export EPSWEEP_COMPILE_CACHE="$OUT/gpu-cache"
started=$(date +%s)
log() { echo "[gpu.sh $(( $(date +%s) - started ))s] $*" >&2; }

# timed NAME LIMIT_S COMMAND...: stdout to $OUT/NAME.json, stderr to $OUT/NAME.log, and one
# line with the wall time, the exit status and (where GNU time is installed) the peak RSS
timed() {
    local name=$1 limit=$2 t0 status rss=""
    shift 2
    t0=$(date +%s.%N)
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f "%M" -o "$OUT/$name.rss" timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
        status=$?
        rss=", peak RSS $(( $(tail -n 1 "$OUT/$name.rss" 2>/dev/null || echo 0) / 1024 )) MiB"
    else
        timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
        status=$?
    fi
    log "$name: exit $status in $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }") s$rss" \
        "| $(grep -E '^trained|^extracted|compilation' "$OUT/$name.log" | tail -n 2 | tr '\n' ' ')"
    return $status
}

nvidia-smi -L | tee "$OUT/gpu-devices.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/gpu-devices.txt"
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || log "pip install -e . failed; importing from the checkout"
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" \
    | tee -a "$OUT/gpu-devices.txt"

log "preflight: a 2-setting MLP sweep on the GPU"
if ! timed gpu-preflight 90 $PY -m epsweep grid --eps 1e-8 1 --steps 50 -f json; then
    tail -n 40 "$OUT/gpu-preflight.log" >&2
    log "preflight failed: stopping here"
    exit 1
fi

log "MLP comparison"
timeout 330 $PY benchmarks/bench_sweep.py --grids 1 256 1024 4096 --skip keras --subset 8 \
    --output "$OUT/gpu-mlp.json" > "$OUT/gpu-mlp.txt" 2> "$OUT/gpu-mlp.log" || log "MLP comparison: exit $?"
cat "$OUT/gpu-mlp.txt"

log "Inception-v3 bf16 299x299, full model"
timed gpu-inception-8 120 $PY -m epsweep inception --dataset synthetic --image-size 299 --dtype bfloat16 \
    --eps "log:1e-8:1:8" --steps 20 --batch-size 32 -f json
timed gpu-inception-64 90 $PY -m epsweep inception --dataset synthetic --image-size 299 --dtype bfloat16 \
    --eps "log:1e-8:1:64" --steps 20 --batch-size 32 -f json

log "Inception-v3 bf16 299x299, frozen base (random weights in the torchvision/timm layout)"
$PY - "$OUT/gpu-inception-weights.safetensors" <<'PY' || log "weights: exit $?"
import sys, safetensors.torch, timm
safetensors.torch.save_file(timm.create_model("inception_v3", pretrained=False).state_dict(), sys.argv[1])
PY
for n in 8 64; do
    timed "gpu-frozen-$n" 50 $PY -m epsweep inception --dataset synthetic --image-size 299 --dtype bfloat16 \
        --weights "$OUT/gpu-inception-weights.safetensors" --freeze-base \
        --eps "log:1e-8:1:$n" --epochs 2 --batch-size 32 -f json
done
rm -f "$OUT/gpu-inception-weights.safetensors" "$OUT"/*.rss
rm -rf "$OUT/gpu-cache" "$OUT/gpu-cache-exports"
log "done"
