#!/usr/bin/env bash
# The GPU speed table of the README in one command (one H100/H200, ≤ 10 minutes):
#
#     bash tools/gpu_benchmark.sh            # everything below, printed as it runs
#     QUICK=1 bash tools/gpu_benchmark.sh    # batch 8 and 256 of ACT only (≈ 4 minutes)
#     PI05=1 bash tools/gpu_benchmark.sh     # only full-size pi0.5: full fine-tuning vs LoRA r=16 (≈ 3 minutes)
#
# 1. A synthetic dataset like the yardsticks' (one 224x224 camera stored as JPEG, 14 joints), materialised once.
# 2. ACT and Diffusion Policy trained through the normal training command — data loading, the
#    device-side JPEG decode and the prefetcher included — eager and with compile=true (whole step
#    compiled and CUDA-graphed), bf16 (the default on a bf16 GPU); medians over the logging windows
#    after warm-up via `tools/benchmark.py speed` (samples/s, ms/step, data wait, peak memory).
# 3. `tools/benchmark.py train --modes all --peers`: eager / compiled / graphed step programs on
#    synthetic batches with compile+capture seconds, and LeRobot's own ACT and Diffusion policies
#    timed in the same process (when `lerobot` imports), with the ratios.
#
# 4. Full-size pi0.5 (3.35B, random weights): full fine-tuning and LoRA r=16, step time and peak GPU
#    memory at batch 8, bf16, gradient checkpointing, next to the memory planner's estimate.
#
# Needs the project installed (pip install -e ".[dev]" and lerobot==0.4.4 --no-deps for the peers).
# A machine without network: put wheels in .whl/ and they are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:.${PYTHONPATH:+:$PYTHONPATH}" || exit 1
fi
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 NEURACORE_HOME=${NEURACORE_HOME:-/tmp/neuracore-gpu-bench}
STEPS=${STEPS:-120}        # optimizer steps per training run; windows after SKIP are the median
SKIP=${SKIP:-40}           # warm-up steps left out (compile, CUDA-graph capture, cuDNN autotuning)
LOG=10
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

$PY - <<'EOF'
from neuracore.ml.benchmarks.data_loading import make_synthetic_dataset
from neuracore.ml.datasets.format import available_datasets
if "gpubench" not in available_datasets():
    rate = make_synthetic_dataset("gpubench", None, episodes=8, frames=400, encoding="jpeg", cameras=1)
    print(f"dataset gpubench: 8 x 400 frames, 1 camera 224x224 JPEG, 14 joints ({rate:.0f} frames/s)")
EOF

train() {  # name algorithm batch compile
    local name=$1 algo=$2 batch=$3 compile=$4
    local start=$SECONDS
    $PY -m neuracore.ml.train algorithm="$algo" dataset_name=gpubench batch_size="$batch" compile="$compile" \
        max_steps="$STEPS" logging_frequency=$LOG checkpoint_frequency=100000 validation_split=0.0 num_workers=8 \
        training.log_images=false algorithm.use_pretrained_weights=false memory_monitor.enabled=false \
        training_name="$name" 2> "$NEURACORE_HOME/$name.log" > /dev/null \
        || { echo "$name: FAILED ($(tail -1 "$NEURACORE_HOME/$name.log"))"; return; }
    $PY tools/benchmark.py speed "$NEURACORE_HOME/training/runs/$name" --skip-steps "$SKIP"
    echo "  $name: $((SECONDS - start)) s wall including start-up, compile and capture"
    grep -h "torch.compile:" "$NEURACORE_HOME/$name.log" | sed 's/^.*torch.compile:/  torch.compile:/'
}
pi05() {  # full-size pi0.5 step time and peak memory: full fine-tuning vs LoRA, with the planner's estimate
    echo "== full-size pi0.5, batch 8, bf16 autocast, gradient checkpointing, random weights"
    for lora in "" "lora.rank=16"; do
        $PY tools/benchmark.py train algorithm=pi05 $lora algorithm.gradient_checkpointing=true --batch-size 8 \
            --cameras 1 --horizon 50 --precision bf16 --steps 10 --warmup 3 --no-baseline 2>&1 | grep -v "^W[0-9]"
    done
    $PY tools/benchmark.py memory algorithm=pi05 --gpu-gb 141 --batch-size 8 --cameras 1 --lora-ranks 16 2>&1 | tail -20
}
if [ -n "${PI05:-}" ]; then pi05; exit 0; fi
rm -rf "$NEURACORE_HOME/training/runs"
mkdir -p "$NEURACORE_HOME"
echo "== through the training command (bf16, data loading included)"
ALGOS="act diffusion_policy"; [ -n "${QUICK:-}" ] && ALGOS="act"
for algo in $ALGOS; do
    for batch in 8 256; do
        train "${algo}_b${batch}_eager" "$algo" "$batch" false
        train "${algo}_b${batch}_compiled" "$algo" "$batch" true
    done
done
[ -n "${QUICK:-}" ] && exit 0
echo "== on-device augmentation (batched, per-sample) against torchvision one call per image"
$PY tools/benchmark.py augment --device cuda --batch-size 256 --cameras 2 --size 224x224 --repeats 10
echo "== step programs on synthetic batches, with LeRobot in the same process"
for algo in act diffusion_policy; do
    for batch in 8 256; do
        $PY tools/benchmark.py train algorithm=$algo --batch-size $batch --modes all --peers --precision bf16 \
            --steps 50 --warmup 5 --no-baseline 2>&1 | grep -v "^W[0-9]"
        $PY tools/benchmark.py train algorithm=$algo --batch-size $batch --modes graphed --precision bf16 \
            --dataset gpubench --workers 12 --steps 50 --warmup 5 --no-baseline 2>&1 | grep -v "^W[0-9]"
    done
done
pi05
