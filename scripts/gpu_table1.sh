#!/usr/bin/env bash
# Table 1 (Omniglot) on one GPU, one call at a time: a lent GPU machine has minutes, so each
# call trains every cell side by side until BUDGET_SECONDS is nearly spent, and the run
# directories (weights included) come back under OUT to be carried into the next call, where
# each cell resumes from its last checkpoint until it reaches its preset's full length.
#
#   scripts/gpu_table1.sh OUT BUDGET_SECONDS
#
# The whole script ends within BUDGET_SECONDS:
#   1. benchmarks on the GPU alone (benchmarks/meta_iteration.py --device cuda, JSON lines),
#      captured (CUDA graphs) and eager, fp32 and tf32, and benchmarks/scaling.py's
#      one-process row on the GPU (OUT/scaling.jsonl);                     [BENCH=0 skips]
#   2. the CUDA cases of the gradient, captured-step, collective (nccl) and device-move
#      tests (pytest -k cuda), beside the training;
#                                                                          [TESTS=0 skips]
#   3. every cell in CELLS trained side by side (new, or `--resume` where RUNS_DIR holds it),
#      stopped by SIGTERM when EVAL_RESERVE seconds are left (the run is marked interrupted
#      at its last checkpoint; nothing else is lost);
#   4. every cell evaluated (the preset's test tasks and steps; `--checkpoint latest` for an
#      unfinished one) and Table 1 written (scripts/table1.py) to OUT/table1.md;
#   5. RUNS_DIR packed into OUT/runs.tar.gz (weights included, TensorBoard not).
#
# Environment: RUNS_DIR (default runs/gpu; unpack a previous OUT/runs.tar.gz there to
# continue), CELLS, MAMLKIT_DATA (default ./shared/data), PYTHON, MAMLKIT_COMMIT (recorded;
# the device copy has no .git), EVAL_RESERVE (default 90 s), SETS (extra --set for new runs),
# EVAL_TASKS (new runs' eval.tasks; default: the preset's), DEVICE (default cuda; cpu: a dry run).
#
# STOP_AT_STEP (tests: a stop that does not race the wall clock): BUDGET_SECONDS limits
# nothing; each cell trains until its run has a checkpoint at step STOP_AT_STEP or later and
# is then stopped by SIGTERM, exactly as the budget stops it (`end`: every cell trains to the
# end of its run); the evaluation and the tests have no time limit either.
set -u
out=${1:?usage: scripts/gpu_table1.sh OUT BUDGET_SECONDS}
budget=${2:?usage: scripts/gpu_table1.sh OUT BUDGET_SECONDS}
stop_at=${STOP_AT_STEP:-}
if [ -n "$stop_at" ] && [ "$stop_at" != end ] && ! [[ "$stop_at" =~ ^[0-9]+$ ]]; then
    echo "gpu_table1.sh: STOP_AT_STEP=$stop_at: expected a step number or 'end'" >&2
    exit 2
fi
start=$(date +%s)
deadline=$((start + budget))
# no clock decides anything under STOP_AT_STEP: a deadline that no run reaches
[ -n "$stop_at" ] && deadline=$((start + 1000000000))
py=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS_DIR:-$root/runs/gpu}
cells=${CELLS:-"omniglot_maml_5w1s omniglot_maml_5w5s omniglot_maml_20w1s omniglot_maml_20w5s \
omniglot_protonet_5w1s omniglot_protonet_5w5s omniglot_protonet_20w1s omniglot_protonet_20w5s"}
reserve=${EVAL_RESERVE:-90}
device=${DEVICE:-cuda}
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
export MAMLKIT_DATA=${MAMLKIT_DATA:-$root/shared/data}
export MAMLKIT_CACHE=${MAMLKIT_CACHE:-$root/.cache}
mkdir -p "$out" "$runs"
stamp() { echo "[$(date -u +%FT%TZ) +$(($(date +%s) - start))s] $*" | tee -a "$out/timeline.txt"; }
left() { echo $((deadline - $(date +%s))); }
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)

stamp "start: budget=${budget}s commit=${MAMLKIT_COMMIT:-unknown} gpu=${gpu:-none}"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    nproc
} >"$out/env.txt" 2>&1
# one process builds the Omniglot cache, so that the trainings do not all build it at once
$py -c "from mamlkit.build import build_tasks; from mamlkit.config import load_config
build_tasks(load_config('omniglot_maml_5w1s'), 'test')" >>"$out/env.txt" 2>&1 ||
    stamp "Omniglot cache build failed (see env.txt)"

if [ "${BENCH:-1}" != 0 ]; then
    stamp "benchmarks"
    bench() {
        timeout 90 $py "$root/benchmarks/meta_iteration.py" --device "$device" "$@" \
            >>"$out/bench.jsonl" 2>>"$out/bench.err" || echo "{\"failed\": \"$*\"}" >>"$out/bench.jsonl"
    }
    bench --workload omniglot-5w1s --iters 300 --cuda-graphs
    bench --workload omniglot-5w1s --iters 100
    bench --workload omniglot-20w1s --iters 100 --cuda-graphs
    bench --workload omniglot-20w1s --iters 30
    bench --workload omniglot-5w1s --iters 300 --cuda-graphs --precision tf32
    bench --workload omniglot-20w1s --iters 100 --cuda-graphs --precision tf32
    bench --workload omniglot-5w1s --iters 300 --cuda-graphs --first-order
    # the distributed issue's one-GPU row: benchmarks/scaling.py's single process on the GPU
    timeout 90 $py "$root/benchmarks/scaling.py" --device "$device" --procs 1 --iters 100 \
        >>"$out/scaling.jsonl" 2>>"$out/bench.err" || echo '{"failed": "scaling"}' >>"$out/scaling.jsonl"
fi

if [ "${TESTS:-1}" != 0 ]; then
    stamp "pytest -k cuda (beside the training)"
    (cd "$root" && timeout $(($(left) - reserve)) $py -m pytest -q -p no:cacheprovider -k cuda \
        tests/test_meta_gradients.py tests/test_algorithms.py tests/test_device_step.py \
        tests/test_distributed.py tests/test_device_move.py \
        >"$out/pytest_cuda.txt" 2>&1; echo "exit $?" >>"$out/pytest_cuda.txt") &
fi

train_for=$(($(left) - reserve))
stamp "training ${train_for}s: $cells"
sets=(--set "train.device=$device" --set train.checkpoint_every=500 --set train.keep_checkpoints=1
    --set train.threads=2 --set train.tensorboard=false)
for s in ${SETS:-}; do sets+=(--set "$s"); done
# the runs' own protocol, so that `eval` writes eval.json / eval-step-N.json (another --tasks
# at eval time would go to eval-tasks-N.json, beside the protocol's)
if [ -n "${EVAL_TASKS:-}" ]; then sets+=(--set "eval.tasks=$EVAL_TASKS"); fi
step_of() { $py -c "import json,sys; print(json.load(open(sys.argv[1])).get('step', 0))" \
    "$1/status.json" 2>/dev/null || echo 0; }
# STOP_AT_STEP: SIGTERM to the training (pid $1) once its run ($2) says it saved a checkpoint
# at step STOP_AT_STEP or later (status.json's step moves at each checkpoint); a run that ends
# earlier ends the watch
stop_at_step() {
    while kill -0 "$1" 2>/dev/null; do
        if [ "$(step_of "$2")" -ge "$stop_at" ]; then
            stamp "$(basename "$2"): step $(step_of "$2") >= STOP_AT_STEP=$stop_at, stopping it"
            pkill -TERM -P "$1" 2>/dev/null # timeout's child, the training itself
            return
        fi
        sleep 0.5
    done
}
pids=()
for cell in $cells; do
    run=$runs/$cell
    if grep -q '"finished"' "$run/status.json" 2>/dev/null; then
        stamp "$cell: finished earlier, not trained"
        continue
    fi
    if ls "$run"/checkpoints/step-*.safetensors >/dev/null 2>&1; then
        args=(--resume "$run" --device "$device") # a run trained elsewhere (a zoo run's CPU) moves here
    else
        rm -rf "$run" # a start that never reached a checkpoint: nothing to keep
        args=("$cell" --out "$run" "${sets[@]}")
    fi
    echo "start $(date -u +%FT%TZ) step $(step_of "$run") gpu ${gpu:-?} commit ${MAMLKIT_COMMIT:-?}" \
        >>"$runs/$cell.segments"
    if [ "$train_for" -gt 10 ]; then
        timeout -k 30 "$train_for" $py -m mamlkit train "${args[@]}" --no-progress \
            >>"$runs/$cell.train.log" 2>&1 &
        pids+=($!)
        if [[ "$stop_at" =~ ^[0-9]+$ ]]; then
            stop_at_step "$!" "$run" &
        fi
    fi
done
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
for cell in $cells; do
    [ -d "$runs/$cell" ] && sed -i "\$s/\$/ -> step $(step_of "$runs/$cell")/" "$runs/$cell.segments"
done
stamp "training stopped"

for cell in $cells; do
    run=$runs/$cell
    [ -f "$run/config.yaml" ] || continue
    if grep -q '"finished"' "$run/status.json" 2>/dev/null; then which=(); else
        which=(--checkpoint latest); fi
    timeout $(($(left) > 20 ? $(left) - 15 : 5)) $py -m mamlkit eval "$run" "${which[@]}" \
        >>"$runs/$cell.eval.log" 2>&1 &
done
wait
stamp "evaluation done"
$py "$root/scripts/table1.py" "$runs" >"$out/table1.md" 2>&1
cat "$out/table1.md"
tar czf "$out/runs.tar.gz" --exclude=tensorboard -C "$(dirname "$runs")" "$(basename "$runs")"
stamp "packed $(du -h "$out/runs.tar.gz" | cut -f1)"
