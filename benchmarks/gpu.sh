#!/usr/bin/env bash
# The GPU figures in one go (about 8 minutes at most on one H100/H200-class GPU): the MLP
# comparison at G = 1, 256, 1024, 4096 (epsweep against the jax and torch loops), and
# Inception-v3 in bfloat16 at 299 x 299 with 8 and 64 settings, full model and frozen base.
#
#   OUT=benchmarks/results bash benchmarks/gpu.sh
#
# Needs a Python with JAX for CUDA, PyTorch, timm, flax, optax, typer, rich, pillow,
# safetensors and flatbuffers already installed (nothing is downloaded: epsweep itself is
# installed from this checkout without dependencies). Every figure lands under $OUT with the
# devices named (nvidia-smi -L); docs/performance.md says how to read them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
started=$(date +%s)
log() { echo "[gpu.sh $(( $(date +%s) - started ))s] $*" >&2; }

nvidia-smi -L | tee "$OUT/gpu-devices.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/gpu-devices.txt"
$PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$OUT/gpu-devices.txt"
export EPSWEEP_COMPILE_CACHE="$OUT/gpu-cache"

log "MLP comparison"
timeout 240 $PY benchmarks/bench_sweep.py --grids 1 256 1024 4096 --skip keras \
    --output "$OUT/gpu-mlp.json" > "$OUT/gpu-mlp.txt" 2> "$OUT/gpu-mlp.log" || log "MLP comparison: exit $?"
cat "$OUT/gpu-mlp.txt"

log "Inception-v3 bf16 299x299, full model"
for n in 8 64; do
    /usr/bin/time -v -o "$OUT/gpu-inception-$n.time" timeout 75 $PY -m epsweep inception --dataset synthetic \
        --image-size 299 --dtype bfloat16 --eps "log:1e-8:1:$n" --steps 20 --batch-size 32 -f json -q \
        > "$OUT/gpu-inception-$n.json" 2> "$OUT/gpu-inception-$n.log" || log "inception $n: exit $?"
    grep -E "Elapsed|Maximum resident" "$OUT/gpu-inception-$n.time" >&2
done

log "Inception-v3 bf16 299x299, frozen base (random weights in the torchvision/timm layout)"
$PY - "$OUT/gpu-inception-weights.safetensors" <<'PY' || log "weights: exit $?"
import sys, safetensors.torch, timm
safetensors.torch.save_file(timm.create_model("inception_v3", pretrained=False).state_dict(), sys.argv[1])
PY
for n in 8 64; do
    /usr/bin/time -v -o "$OUT/gpu-frozen-$n.time" timeout 60 $PY -m epsweep inception --dataset synthetic \
        --image-size 299 --dtype bfloat16 --weights "$OUT/gpu-inception-weights.safetensors" --freeze-base \
        --eps "log:1e-8:1:$n" --epochs 2 --batch-size 32 -f json -q \
        > "$OUT/gpu-frozen-$n.json" 2> "$OUT/gpu-frozen-$n.log" || log "frozen $n: exit $?"
    grep -E "Elapsed|Maximum resident" "$OUT/gpu-frozen-$n.time" >&2
done
rm -f "$OUT/gpu-inception-weights.safetensors"
rm -rf "$OUT/gpu-cache" "$OUT/gpu-cache-exports"
log "done"
