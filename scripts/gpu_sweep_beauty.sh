#!/usr/bin/env bash
# Recipe sweep for amazon-beauty on one lent GPU: several pretrainings side by side, then every model
# decoded on the full test split (beam 10) on the GPU. Run from the repository root on the GPU machine:
#
#   bash scripts/gpu_sweep_beauty.sh            (a lent GPU; the `device` tool's run)
#   SWEEP_DEVICE=cpu SWEEP_SMOKE=1 bash scripts/gpu_sweep_beauty.sh   (a seconds-long smoke test here)
#
# It expects what the GPU machine lacks next to the checkout, in folders git ignores: .whl/ (wheels of
# datasets, dill, multiprocess), .gpu/data/amazon-beauty (the data) and .gpu/ids, .gpu/ids-km (the ID
# artifacts, RQ-VAE and RQ-KMeans, without embeddings.safetensors). Every run is bounded by a wall-clock
# limit so the whole sweep ends inside one device call; a run that hits it is reported, not evaluated.
# Results: $OUT/sweep.tgz (eval JSONs + log tails) and $OUT/summary.txt (one line per run).
set -u
OUT=${OUT:-/tmp/sweep-out}
mkdir -p "$OUT"
DEVICE=${SWEEP_DEVICE:-cuda}
SMOKE=${SWEEP_SMOKE:-0}
# Whole sweep's wall-clock bound (seconds from start); each run's training stops EVAL_RESERVE before it.
DEADLINE=$(( $(date +%s) + ${SWEEP_SECONDS:-500} ))
EVAL_RESERVE=${SWEEP_EVAL_RESERVE:-110}
if [ -d .whl ] && [ "$DEVICE" != cpu ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  PY=python3
else
  PY=${SWEEP_PYTHON:-.venv/bin/python}
fi
export SIDREC_DATA_DIR=$PWD/.gpu/data OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
RUNS=/tmp/sweep-runs
rm -rf "$RUNS" && mkdir -p "$RUNS/res"
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null; nproc; git log -1 --format=%H; } \
  > "$RUNS/res/machine.txt"
EXTRA=()
MAXU=()
if [ "$SMOKE" = 1 ]; then EXTRA=(--set max_steps=2); MAXU=(--max-users 300); fi
PREC=bf16
[ "$DEVICE" = cpu ] && PREC=no

train() {  # name ids preset epochs [--set k=v ...]
  local name=$1 ids=$2 preset=$3 epochs=$4; shift 4
  local t0=$(date +%s)
  timeout $(( DEADLINE - EVAL_RESERVE - t0 )) $PY -m sidrec.cli pretrain --dataset amazon-beauty "${MAXU[@]}" --ids "$ids" \
    --out "$RUNS/$name" --preset "$preset" --max-history 20 --set epochs="$epochs" \
    --set eval_every=0 --set checkpoint_every_steps=0 --set keep_checkpoints=1 \
    --set mixed_precision=$PREC --set seed=0 "$@" "${EXTRA[@]}" > "$RUNS/$name.train.log" 2>&1
  local rc=$?
  echo "$name train rc=$rc seconds=$(( $(date +%s) - t0 )) args: $preset epochs=$epochs $*" \
    >> "$OUT/summary.txt"
}

evaluate() {  # name
  local name=$1
  [ -f "$RUNS/$name/model/manifest.json" ] || return 0
  local t0=$(date +%s)
  timeout $(( DEADLINE - t0 )) $PY -m sidrec.cli eval --dataset amazon-beauty "${MAXU[@]}" \
    --model "$RUNS/$name/model" --device "$DEVICE" --batch-size 256 --ks 5 10 \
    --out "$RUNS/res/$name.json" > "$RUNS/$name.eval.log" 2>&1
  echo "$name eval rc=$? seconds=$(( $(date +%s) - t0 )) $(tr -d '\n ' < "$RUNS/res/$name.json" 2>/dev/null \
    | grep -o '"recall@10":[0-9.]*\|"ndcg@10":[0-9.]*' | tr '\n' ' ')" >> "$OUT/summary.txt"
}

BASE=(--set hidden_dropout=0.15 --set lr=0.001)
LARGE=(--set hidden_dropout=0.2 --set lr=0.0005)
declare -A JOBS
if [ "${SWEEP_SET:-1}" = 1 ]; then
JOBS[base-e30]="base 30 ${BASE[*]}"
JOBS[base-e12]="base 12 ${BASE[*]}"
JOBS[base-e60]="base 60 ${BASE[*]}"
JOBS[base-e30-ls]="base 30 ${BASE[*]} --set label_smoothing=0.1"
JOBS[base-e30-aug]="base 30 ${BASE[*]} --set item_dropout=0.1 --set window_jitter=true"
JOBS[large-e30]="large 30 ${LARGE[*]}"
JOBS[base-e30-km]="base 30 ${BASE[*]}"
elif [ "${SWEEP_SET}" = 3 ]; then  # third round: CPU-sized recipes with what helped
JOBS[small-e30-km-aug]="small 30 --set lr=0.002 --set hidden_dropout=0.1 --set item_dropout=0.1 --set window_jitter=true"
JOBS[base-e30-km-aug2]="base 30 ${BASE[*]} --set item_dropout=0.2 --set window_jitter=true"
else  # second round: RQ-KMeans IDs combined with what helped in the first
JOBS[base-e30-km-aug]="base 30 ${BASE[*]} --set item_dropout=0.1 --set window_jitter=true"
JOBS[large-e30-km]="large 30 ${LARGE[*]}"
JOBS[large-e30-km-aug]="large 30 ${LARGE[*]} --set item_dropout=0.1 --set window_jitter=true"
JOBS[base-e30-km-s1]="base 30 ${BASE[*]} --set seed=1"
JOBS[base-e20-km]="base 20 ${BASE[*]}"
JOBS[small-e30-km]="small 30 --set lr=0.002 --set hidden_dropout=0.1"
fi
for name in "${!JOBS[@]}"; do
  read -r preset epochs rest <<< "${JOBS[$name]}"
  ids=.gpu/ids
  [[ $name == *-km* ]] && ids=.gpu/ids-km
  # shellcheck disable=SC2086
  { train "$name" "$ids" "$preset" "$epochs" $rest; evaluate "$name"; } &
  sleep 2
done
wait
for f in "$RUNS"/*.log; do tail -c 3000 "$f" | tr '\r' '\n' | tail -n 25 > "$RUNS/res/$(basename "$f")"; done
cp "$OUT/summary.txt" "$RUNS/res/"
tar czf "$OUT/sweep.tgz" -C "$RUNS/res" .
cat "$OUT/summary.txt"
