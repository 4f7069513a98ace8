#!/usr/bin/env bash
# The GPU figures in one go (about 8.5 minutes on one H200): the MLP comparison at G = 1, 256,
# 1024, 4096 (epsweep against the jax and torch loops; about 5 minutes there), and Inception-v3
# in bfloat16 at 299 x 299 with 8 and 64 settings, full model and frozen base. Each step has a
# time limit of its own (together over 12 minutes), cut to what is left of BUDGET_S, the time
# the whole script may take (default 570 s, under the device tool's 600 s a command; less 15 s
# kept for the rest): a step with under 20 s left is skipped. The MLP comparison writes its JSON
# after every grid, so a cut run keeps the grids it finished.
#
#   OUT=benchmarks/results/gpu bash benchmarks/gpu.sh
#
# Needs a Python with JAX for CUDA, PyTorch, timm, flax, optax, typer, rich, pillow,
# safetensors and flatbuffers already installed (nothing is downloaded: epsweep itself is
# installed from this checkout without dependencies, or imported from it when that fails).
# A short preflight runs first and ends the script at once when JAX has no GPU or a sweep
# fails, so that a broken environment costs seconds of a lease, not minutes. Every figure lands
# under $OUT with the devices named (nvidia-smi -L); docs/performance.md says how to read them.
# The exit status is the number of steps that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export EPSWEEP_COMPILE_CACHE="$OUT/gpu-cache"
started=$(date +%s)
BUDGET_S=${BUDGET_S:-570}
[[ $BUDGET_S =~ ^[0-9]+$ ]] && [ "$BUDGET_S" -ge 120 ] || { echo "gpu.sh: BUDGET_S must be whole seconds, at least 120" >&2; exit 2; }
failed=0
trap 'rm -rf "$OUT/gpu-cache" "$OUT/gpu-cache-exports" "$OUT"/*.safetensors "$OUT"/*.rss' EXIT
log() { echo "[gpu.sh $(( $(date +%s) - started ))s] $*" >&2; }
# left LIMIT: LIMIT, or less where the budget has less left (15 s kept for the rest); 0: skip the step
left() {
    local rest=$(( BUDGET_S - ($(date +%s) - started) - 15 ))
    if [ "$rest" -lt 20 ]; then echo 0; elif [ "$rest" -lt "$1" ]; then echo "$rest"; else echo "$1"; fi
}

# timed NAME LIMIT_S COMMAND...: stdout to $OUT/NAME.json, stderr to $OUT/NAME.log, and one
# line with the wall time, the exit status and (where GNU time is installed) the peak RSS
timed() {
    local name=$1 limit t0 status rss=""
    limit=$(left "$2")
    shift 2
    if [ "$limit" = 0 ]; then
        log "$name: skipped, the budget ($BUDGET_S s) is spent"
        failed=$((failed + 1))
        return 1
    fi
    t0=$(date +%s.%N)
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f "%M" -o "$OUT/$name.rss" timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
        status=$?
        local kib
        kib=$(tail -n 1 "$OUT/$name.rss" 2>/dev/null)
        [[ $kib =~ ^[0-9]+$ ]] && rss=", peak RSS $(( kib / 1024 )) MiB"
    else
        timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
        status=$?
    fi
    log "$name: exit $status in $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }") s$rss" \
        "| $(grep -E '^trained|^extracted|compilation' "$OUT/$name.log" | tail -n 2 | tr '\n' ' ')"
    [ "$status" = 0 ] || failed=$((failed + 1))
    return $status
}

nvidia-smi -L | tee "$OUT/gpu-devices.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/gpu-devices.txt"
timeout 120 $PY -m pip install -q --no-deps --no-build-isolation --no-index --disable-pip-version-check -e . \
    >"$OUT/pip.log" 2>&1 || log "pip install -e . failed; running python -m epsweep from the checkout"
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" \
    | tee -a "$OUT/gpu-devices.txt"

log "preflight: JAX on the GPU, then a 2-setting MLP sweep there"
if ! $PY -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")'; then
    log "JAX has no GPU here (default backend: $($PY -c 'import jax; print(jax.default_backend())' 2>&1 | tail -n 1)): stopping"
    exit 1
fi
if ! timed gpu-preflight 90 $PY -m epsweep grid --eps 1e-8 1 --steps 50 -f json; then
    tail -n 40 "$OUT/gpu-preflight.log" >&2
    log "preflight failed: stopping here"
    exit 1
fi

log "MLP comparison"
mlp_limit=$(left 330)
[ "$mlp_limit" = 0 ] && { log "MLP comparison and the rest: skipped, the budget is spent"; exit $((failed + 6)); }
timeout "$mlp_limit" $PY benchmarks/bench_sweep.py --grids 1 256 1024 4096 --skip keras --subset 8 \
    --output "$OUT/gpu-mlp.json" > "$OUT/gpu-mlp.txt" 2> "$OUT/gpu-mlp.log" || { log "MLP comparison: exit $?"; failed=$((failed + 1)); }
cat "$OUT/gpu-mlp.txt"

log "Inception-v3 bf16 299x299, full model"
timed gpu-inception-8 120 $PY -m epsweep inception --dataset synthetic --image-size 299 --dtype bfloat16 \
    --eps "log:1e-8:1:8" --steps 20 --batch-size 32 -f json
timed gpu-inception-64 90 $PY -m epsweep inception --dataset synthetic --image-size 299 --dtype bfloat16 \
    --eps "log:1e-8:1:64" --steps 20 --batch-size 32 -f json

log "Inception-v3 bf16 299x299, frozen base (random weights in the torchvision/timm layout)"
weights_limit=$(left 60)
[ "$weights_limit" = 0 ] && { log "weights and the frozen-base runs: skipped, the budget is spent"; exit $((failed + 3)); }
timeout "$weights_limit" $PY - "$OUT/gpu-inception-weights.safetensors" <<'PY' || { log "weights: exit $?"; failed=$((failed + 1)); }
import sys, safetensors.torch, timm
safetensors.torch.save_file(timm.create_model("inception_v3", pretrained=False).state_dict(), sys.argv[1])
PY
for n in 8 64; do
    timed "gpu-frozen-$n" 50 $PY -m epsweep inception --dataset synthetic --image-size 299 --dtype bfloat16 \
        --weights "$OUT/gpu-inception-weights.safetensors" --freeze-base \
        --eps "log:1e-8:1:$n" --epochs 2 --batch-size 32 -f json
done
log "done: $failed step(s) failed"
exit "$failed"
