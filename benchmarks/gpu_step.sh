#!/usr/bin/env bash
# One prepared GPU session for bench_step.py (issue 6): the paper's students against a ResNet-50
# teacher, batch 256, bf16 autocast + channels_last, each against the official-style step on the
# same card (`gpu_step.sh compile`: the compiled rows). Results land in $OUT (or benchmarks/results/gpu). Carried wheels (.whl) are installed
# first when present (the GPU image lacks this project's pinned transformers/timm).
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm, transformers; print('torch', torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
common="--device cuda --bf16 --batch_size 256 --repeats 7 --warmup 3"
if [ "${1:-}" = "compile" ]; then  # the compiled rows (--torch_compile --compile_teacher), ResNet-18 only
  timeout 240 python3 benchmarks/bench_step.py $common --student resnet18 --num_students 0 --compile \
    --output_json "$OUT/step_resnet18_compile.json"
  exit
fi
timeout 90 python3 benchmarks/bench_step.py $common --student resnet18 --num_students 2 --output_json "$OUT/step_resnet18.json"
timeout 90 python3 benchmarks/bench_step.py $common --student mobilenetv3_large_100 --num_students 0 --output_json "$OUT/step_mobilenetv3_large_100.json"
timeout 200 python3 benchmarks/bench_step.py $common --student efficientnet_b0 --num_students 0 --output_json "$OUT/step_efficientnet_b0.json"
