#!/usr/bin/env bash
# One GPU session for the Omniglot issue, as a single command (a lent GPU machine has minutes):
#   1. benchmark timings on the GPU alone (benchmarks/meta_iteration.py, JSON lines);
#   2. the Table-1 cells not run on the CPU, trained side by side on the one GPU, each stopped
#      after TRAIN_SECONDS (SIGTERM: the run is marked `interrupted` at its last checkpoint),
#      while the float64 gradient tests run their CUDA cases;
#   3. every run evaluated: `mamlkit eval RUN` if it finished, else `--checkpoint latest`;
#   4. everything except weights packed into OUT_DIR/runs.tar.gz.
#
#   scripts/gpu_omniglot.sh OUT_DIR [TRAIN_SECONDS] [DEVICE]
#
# Environment: MAMLKIT_DATA (the folder holding omniglot/), PYTHON (default python3),
# CELLS (presets to train), SETS (extra `--set` overrides, space separated), EVAL_TASKS,
# BENCH=0 (skip the benchmarks, for a dry run of the rest on the CPU) or so (second order only).
set -u
out=${1:?usage: scripts/gpu_omniglot.sh OUT_DIR [TRAIN_SECONDS] [DEVICE]}
budget=${2:-300}
device=${3:-cuda}
py=${PYTHON:-python3}
cells=${CELLS:-"omniglot_protonet_5w5s omniglot_protonet_20w1s omniglot_protonet_20w5s \
omniglot_maml_5w5s omniglot_maml_20w1s omniglot_maml_20w5s omniglot_pretrained_5w1s"}
runs=${RUNS_DIR:-runs_gpu}
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p "$out" "$runs"
stamp() { echo "[$(date -u +%FT%TZ)] $*" | tee -a "$out/timeline.txt"; }

stamp "start: device=$device budget=${budget}s commit=${MAMLKIT_COMMIT:-unknown}"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    nproc
} >"$out/env.txt" 2>&1

bench() {
    timeout 120 $py "$root/benchmarks/meta_iteration.py" --device "$device" "$@" >>"$out/bench.jsonl"
}
case ${BENCH:-all} in
    0) ;;
    so)  # the second-order MAML workloads only
        stamp "benchmarks (second order)"
        bench --workload omniglot-5w1s --iters 100
        bench --workload omniglot-20w1s --iters 50
        ;;
    *)
        stamp "benchmarks"
        bench --workload omniglot-5w1s --iters 100
        bench --workload omniglot-5w1s --iters 100 --first-order
        bench --workload omniglot-20w1s --iters 50
        bench --workload protonet-omniglot-60w1s --iters 100
        bench --workload omniglot-5w1s --iters 20 --impl learn2learn-loop
        ;;
esac

stamp "training: $cells"
sets=(--set "train.device=$device" --set train.checkpoint_every=250 --set train.threads=2)
for s in ${SETS:-}; do sets+=(--set "$s"); done
for cell in $cells; do
    timeout -k 60 "$budget" $py -m mamlkit train "$cell" --out "$runs/$cell" --no-progress \
        "${sets[@]}" >"$runs/$cell.train.log" 2>&1 &
done
timeout 250 $py -m pytest -q -p no:cacheprovider -k cuda "$root/tests/test_meta_gradients.py" \
    "$root/tests/test_algorithms.py" >"$out/pytest_cuda.txt" 2>&1
stamp "pytest -k cuda exit $?"
wait
stamp "training done"

for cell in $cells; do
    if grep -q '"finished"' "$runs/$cell/status.json" 2>/dev/null; then which=(); else
        which=(--checkpoint latest); fi
    timeout 150 $py -m mamlkit eval "$runs/$cell" "${which[@]}" ${EVAL_TASKS:+--tasks $EVAL_TASKS} \
        >"$runs/$cell.eval.log" 2>&1 &
done
wait
stamp "evaluation done"
for cell in $cells; do
    echo "== $cell: $(cat "$runs/$cell/status.json" 2>/dev/null)"
    cat "$runs/$cell"/eval*.json 2>/dev/null
    echo
    tail -n 2 "$runs/$cell.train.log" "$runs/$cell.eval.log"
done | tee "$out/summary.txt"
tar czf "$out/runs.tar.gz" --exclude='*.safetensors' --exclude=tensorboard "$runs"
stamp "packed"
