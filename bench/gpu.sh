#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one run, within 8 minutes on one NVIDIA GPU:
#
#   bash bench/gpu.sh [OUT_DIR]          # default bench-gpu/: a JSON file and a log per step
#
#   seed        the tutorial's network, 20 epochs, float32 against mixed_bfloat16
#   population  1, 16, 64 and 256 `seed` members as one population: s/epoch, peak memory
#   convnets    `cnn` and `speedrun` to their accuracy, float32 against mixed_bfloat16
#
# MNIST comes from $MNISTLAB_DATA/mnist (default ../shared/datasets/mnist). PYTHON picks the
# interpreter (default .venv/bin/python, else python3): it needs mnistlab's dependencies and
# a jaxlib that sees the GPU (docs/benchmarks.md says how on a machine with no network).
# BUDGET=tiny runs every step at a token size on any machine; bench_test.py runs it so on
# the CPU, so the script is known to work before a GPU is at hand.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-gpu}
mkdir -p "$out"
py=${PYTHON:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
data=("--data-dir" "${MNISTLAB_DATA:-../shared/datasets}/mnist")

if [ "${BUDGET:-full}" = tiny ]; then
  seed_epochs=2; sizes=1,2; pop=(--epochs 2 --subset 1024); convnet_epochs=(--epochs 2)
  small=(--mnistlab-arg=--set --mnistlab-arg=training.subset=1024)
else
  seed_epochs=20; sizes=1,16,64,256; pop=(--epochs 3); convnet_epochs=(); small=()
fi

{ "$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: none"
  "$py" bench/machine.py; } | tee "$out/devices.txt"

step() {  # name, command...: its output to $out/name.log, its wall time after it
  local name=$1 start=$SECONDS
  shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.log"
  echo "== $name: $((SECONDS - start)) s" | tee -a "$out/$name.log"
}

step seed "$py" bench/bench_precision.py --presets seed --epochs "$seed_epochs" "${small[@]}" "${data[@]}" \
  --out "$out/seed.json"
step population "$py" bench/bench_population.py --sizes "$sizes" "${pop[@]}" --out "$out/population.json"
step convnets "$py" bench/bench_precision.py --presets cnn,speedrun "${convnet_epochs[@]}" "${small[@]}" \
  "${data[@]}" --out "$out/convnets.json"
echo "== all in $SECONDS s; figures in $out/"
