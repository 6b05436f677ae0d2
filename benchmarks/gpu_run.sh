#!/usr/bin/env bash
# One prepared GPU run (≤ 9 min on one H200), for a session that is lent the device:
#   (a) a Fashion-MNIST MoCo-v2 teacher from scratch, time-budgeted (stronger augmentation from the
#       start, batch 1024), exported as a teacher folder and evaluated (kNN + linear probe);
#   (b) benchmarks/bench_gpu_input.py end to end;
#   (c) the study's two students (SEED from the new teacher, MoCo-v2 alone) at 5x its steps.
# Everything lands in $OUT (the device tool brings it back) or outputs/gpu_run.
#
# The GPU machine reaches no registry and has no Fashion-MNIST: prepare here, once,
#   mkdir -p .gpu_data && cp /usr/share/datasets/fashion-mnist/*.gz .gpu_data/
#   echo /.gpu_data/ >> .git/info/exclude
# and carry .gpu_data (and .whl, wheels of packages its image lacks, see the device README).
# The device tool sends at most 64 MiB (tracked files included): this checkout tracks 73 MB of shipped
# weights and ONNX graphs, and the tool sends the session's own checkout: until those leave git (LFS,
# release assets) the device refuses this repository. The script itself needs none of them.
# CPU smoke run (a few steps of each part, 4.5 min on 2 cores): GPU_RUN_SMOKE=1 bash benchmarks/gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-outputs/gpu_run}
WORK=${GPU_RUN_WORK:-outputs/gpu_run_work}
PY=${PY:-python3}
SMOKE=${GPU_RUN_SMOKE:-0}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 SEED_HF_FASHION_MNIST_DIR=${SEED_HF_FASHION_MNIST_DIR:-$PWD/.gpu_data}
[ -f "$SEED_HF_FASHION_MNIST_DIR/train-images-idx3-ubyte.gz" ] ||
  export SEED_HF_FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/machine.txt"

if [ "$SMOKE" = 1 ]; then
  TEACHER=(--max_steps 3 --batch_size 32 --queue_size 256 --max_eval_samples 256)
  EVAL=(--max_train_samples 512 --max_eval_samples 256)
  BENCH=(--device cpu --batch_size 8 --steps 3 --student resnet18 --teacher resnet18 --num_images 32
    --num_shards 4 --num_workers 2 --image_size 64)
  STUDY=(--student_steps 3 --batch_size 32 --queue_size 256 --eval_steps 2 --monitor_samples 256
    --eval_train_samples 512 --eval_test_samples 256 --label_fractions 1.0)
else
  TEACHER=(--time_budget_seconds 300 --batch_size 1024 --queue_size 16384 --save_steps 100000)
  EVAL=()
  BENCH=()
  STUDY=(--student_steps 5000)  # 5x the study's 1000 steps
fi

log() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.txt"; }

log "(a) teacher from scratch"
$PY tools/run_fmnist_teacher.py --output_dir "$WORK/teacher" --export_dir "$WORK/teacher_export" \
  --learning_rate 0.03 --contrastive_temperature 0.1 --moco_momentum 0.99 \
  --augmentation_overrides '{"jitter": [0.8, 0.8, 0, 0], "scale": [0.2, 1.0]}' "${TEACHER[@]}" |
  tee "$OUT/teacher_train.log"
cp "$WORK/teacher/log.jsonl" "$OUT/teacher_log.jsonl"
$PY examples/run_eval.py --models "$WORK/teacher_export" --linear_probe --output_file "$OUT/teacher_eval.json" \
  "${EVAL[@]}"

log "(b) bench_gpu_input end to end"
$PY benchmarks/bench_gpu_input.py --output_json "$OUT/bench_gpu_input.json" "${BENCH[@]}" ||
  log "(b) failed: see the output above"

log "(c) the study's students from the new teacher"
$PY tools/run_fmnist_study.py --teacher "$WORK/teacher_export" --output_dir "$WORK/study" \
  --work_dir "$WORK/study_runs" --manifest '' --reference_results "$OUT/teacher_eval.json" "${STUDY[@]}" |
  tee "$OUT/study.log"
cp "$WORK/study/results.json" "$OUT/study_results.json" 2>/dev/null || ls "$WORK/study"
log "done"
