#!/usr/bin/env bash
# Every check that needs a CUDA device, in one run (a lent GPU machine has minutes, not hours):
#   1. gpu_sync_check.py  - no scheduler step synchronises host and device  -> results/gpu_sync.json
#   2. gpu_sweep_cost.py  - one sweep cell of each recipe, split by phase    -> results/gpu_sweep_cost.json
#   3. fastsample ems --validate of the demo DDPM's shipped statistics on every grid its scheduler offers
#   4. fastsample ems of the demo flow model (grid 128 x 256 samples, standard errors) with --validate
# 2 runs first and alone (it times things; at most 3 minutes), then 1, 3 and 4 side by side. Outputs land in $OUT
# when set (the device tool), else in out/gpu/; `fastsample ems` refuses to replace statistics already there, so
# a rerun needs an empty folder. Python packages missing on the machine come as wheels in .whl/ (--no-deps).
#   bash benchmarks/gpu_checks.sh
set -u
cd "$(dirname "$0")/.."
DEST=${OUT:-out/gpu}
mkdir -p "$DEST"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"

rc=0
timeout 180 python3 benchmarks/gpu_sweep_cost.py > "$DEST/gpu_sweep_cost.log" 2>&1 || rc=1
cp benchmarks/results/gpu_sweep_cost.json "$DEST/" 2>/dev/null
python3 -m fastsample ems --model demo-ddpm --ems fastsample/demo/weights/ddpm/ems.safetensors --validate --batch-size 1024 \
    --device cuda --no-progress --out "$DEST/ems_ddpm.safetensors" > "$DEST/ems_ddpm.log" 2>&1 &
ddpm=$!
python3 -m fastsample ems --model demo-flow --grid-size 128 --num-samples 256 --validate --batch-size 1024 \
    --device cuda --no-progress --out "$DEST/ems_flow.safetensors" > "$DEST/ems_flow.log" 2>&1 &
flow=$!
python3 benchmarks/gpu_sync_check.py > "$DEST/gpu_sync.log" 2>&1 || rc=1
cp benchmarks/results/gpu_sync.json "$DEST/" 2>/dev/null
wait $ddpm || rc=1
wait $flow || rc=1
tail -n 30 "$DEST"/*.log
exit $rc
