#!/usr/bin/env bash
# Fashion-MNIST runs of ResNet-20 and VGG-8 (RESULTS.md, issue 6) and the
# CIFAR-10 / ImageNet run-time benchmark, on one GPU, inside a time budget.
#
# Usage (from the repository root, rsjax importable: `pip install -e .`):
#   OUT=/tmp/out bash experiments/configs/results_fmnist_gpu.sh
#   python -m experiments.results --runs_dir=runs --out=/tmp/r.md
#
# It ran twice on one NVIDIA H200 (16 CPU cores) through this workplace's
# device tool, and twice more with the points of results_fmnist_gpu_bn.sh,
# see experiments/benchmarks/GPU_RUNS.md. Device-specific there:
#   * no package index: the missing Python packages travelled as wheels in
#     .whl/ (WHEELS=.whl installs them into /tmp/site, on PYTHONPATH);
#   * rsjax was not installed: LINK_KERNELS=1 links kernels/ to
#     rsjax/kernels in that throwaway copy (what `pip install -e .` maps);
#   * the Fashion-MNIST IDX files travelled in .devdata/ (SOURCE_DIR).
#
# What it does, all processes sharing the one GPU
# (XLA_PYTHON_CLIENT_PREALLOCATE=false):
#   1. builds the Fashion-MNIST TFDS dataset once (DATA_DIR);
#   2. in its own process group (its id in $RUNS/fmnist.pgid): the two float
#      baselines (MODEL_base: the config as is, also a prune 0.3 + STE k = 8
#      point), then, as soon as a baseline's checkpoint exists, the
#      compression points from it (--config.train.init_checkpoint), at most
#      MAX_JOBS at a time, in the priority order of POINTS below; every run
#      is killed at the deadline (BUDGET_S after the start) so packing
#      always happens;
#   3. meanwhile the config run-time benchmark (config_runtime_bench.py) of
#      BENCH_CONFIGS, in parallel: their compiles overlap, their timed
#      sections take a lock and SIGSTOP the Fashion-MNIST process group, so
#      the step rates are measured with the GPU to themselves (not from
#      the sweeps of step 4, which are not paused: do not set both);
#   4. meanwhile, for each finished run in SWEEP_RUNS (workdirs, e.g. carried
#      along), its whole emulation study in parts
#      (results_sweeps_parts.sh: SWEEP_PARALLEL processes, SWEEP_LIMIT test
#      images, SWEEP_CALIBRATION training images, SWEEP_BATCH a batch,
#      killed at the deadline), into $RUNS/sweeps;
#   5. packs the run folders without checkpoints (except ResNet-20's small
#      checkpoints/baseline), the benchmark figures and the sweeps (parts
#      and merged JSON, $OUT/sweeps.tgz) into $OUT.
#
# Point names and flags follow results_fmnist.sh, so experiments/results.py
# tabulates them. The points use their config's schedule
# (fashion_mnist_resnet20.py: 1500 sharing + 1500 fine-tune steps at 1e-3;
# fashion_mnist_vgg8.py: 1000 + 1000 at 1e-4) and an ADC sweep of 4 and 6
# bits (the evaluate stage adds 5 bits).
#
# On the H200 the default budget (515 s) was too short for all 20 points:
# the first call finished ResNet-20's baseline and 4 points and no VGG-8 run
# (its sharing at 1e-3 diverged, since lowered to 1e-4); a second call ran
# VGG-8 alone (MODELS=vgg8, 4 POINTS, EXTRA=--config.eval.emulate=False,
# BENCH_CONFIGS=). Exact commands and results: GPU_RUNS.md. Without a time
# limit, set BUDGET_S large (e.g. 36000).
#
# Dry run on a CPU (tiny steps, a few points):
#   RUNS=/tmp/dry OUT=/tmp/dry/out BUDGET_S=900 POINTS_LIMIT=3 \
#     EXTRA="--config.train.steps=4 ..." BENCH_EXTRA="--steps=1 ..." \
#     bash experiments/configs/results_fmnist_gpu.sh
set -u
RUNS=${RUNS:-runs}
OUT=${OUT:-$RUNS/out}
BUDGET_S=${BUDGET_S:-515}
MAX_JOBS=${MAX_JOBS:-10}
SOURCE_DIR=${SOURCE_DIR:-/usr/share/datasets/fashion-mnist}
DATA_DIR=${DATA_DIR:-$RUNS/tfds}
EXTRA=${EXTRA:-}  # flags for every run
BASE_EXTRA=${BASE_EXTRA:-}  # flags for the baseline runs only
BENCH_EXTRA=${BENCH_EXTRA:---steps=20 --eval_batches=3}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
BENCH_CONFIGS=${BENCH_CONFIGS-cifar10_resnet20 cifar10_vgg8 imagenet_resnet18}
POINTS_LIMIT=${POINTS_LIMIT:-1000}
PYTHON=${PYTHON:-python3}
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
# Shared by all runs: steps of the same shapes compile once.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$RUNS/jax_cache}

config_of() {
  echo "experiments/configs/fashion_mnist_$1.py"
}

MODELS=${MODELS-resnet20 vgg8}  # set but empty: no baseline (e.g. sweeps only)
# The compression points, most wanted first: MODEL VARIANT PRUNE K [TAG
# [FLAG...]] (see point() below).
POINTS=${POINTS-"
vgg8 share 0 4
vgg8 ste 0.5 4
resnet20 share 0 4
vgg8 paper 0.5 4
resnet20 ste 0.5 4
vgg8 share 0 2
vgg8 prune 0.5 0
resnet20 prune 0.5 0
vgg8 ste 0.5 2
resnet20 paper 0.5 4
vgg8 share 0 8
resnet20 share 0 8
vgg8 paper 0.3 8
resnet20 paper 0.3 8
resnet20 share 0 2
vgg8 share 0 16
vgg8 prune 0.7 0
resnet20 prune 0.7 0
vgg8 paper 0.5 2
resnet20 ste 0.5 2
"}

left() { echo $(( DEADLINE - $(date +%s) )); }

# run NAME MODEL [--config.x=y ...]: one pipeline run, killed at the deadline.
run() {
  local name=$1 model=$2
  shift 2
  if [ -f "$RUNS/$name/results.json" ]; then
    echo "skip $name (done)"
    return
  fi
  local t=$(left)
  if [ "$t" -lt 20 ]; then
    echo "$(date +%T) not started $name (deadline)"
    return
  fi
  echo "$(date +%T) start $name"
  # --foreground: the run stays in this process group (see the pause above).
  # shellcheck disable=SC2086
  timeout --foreground -k 5 "$t" "$PYTHON" -m experiments.main \
    --config="$(config_of "$model")" --workdir="$RUNS/$name" \
    --config.data.source_dir="$SOURCE_DIR" --config.data.data_dir="$DATA_DIR" \
    "$@" $EXTRA > "$RUNS/$name.log" 2>&1
  local rc=$?
  if [ "$rc" = 0 ]; then
    echo "$(date +%T) done $name"
    pack_finished
  else
    echo "$(date +%T) FAILED $name (exit $rc)"
  fi
}

# The finished runs so far (no checkpoints, no rsjax-format layer files:
# compressed_model.npz holds them, and no prune-only compressed model: it
# stores every block, 38 MB for VGG-8) as $OUT/finished_runs.tgz.NN parts of at
# most 15 MiB (the device tool returns files of up to 16 MiB), so a call
# killed before the end still returns them. One packer at a time (flock).
pack_finished() {
  (
    set -o pipefail  # a failed tar must not replace the parts with nothing
    shopt -s nullglob
    flock 9
    local out
    out=$(mkdir -p "$OUT" && cd "$OUT" && pwd) || exit 1  # OUT may be relative
    cd "$RUNS" || exit 1
    local finished=(*/results.json)
    [ ${#finished[@]} -gt 0 ] || exit 0
    local tmp=".pack.$BASHPID"
    rm -rf "$tmp" && mkdir -p "$tmp"
    if tar czf - --exclude=checkpoints --exclude='*.rsjax.npz' \
          --exclude='*_prune_p*/compressed_model.npz' \
          "${finished[@]%/results.json}" \
        | split -b 15m -d - "$tmp/finished_runs.tgz."; then
      rm -f "$out"/finished_runs.tgz.*
      mv "$tmp"/finished_runs.tgz.* "$out"/
    fi
    rm -rf "$tmp"
  ) 9> "$RUNS/pack.lock"
}

# point MODEL VARIANT PRUNE K [TAG [FLAG...]]: TAG (e.g. 'bn') goes into the
# run's name after the model ('-' for none), the FLAGs to experiments.main.
point() {
  local model=$1 variant=$2 p=$3 k=$4 tag=${5:--}
  shift 4
  [ $# -gt 0 ] && shift
  case "$tag" in
    -?*) echo "$(date +%T) bad point '$model $variant $p $k $tag ...': a" \
           "flag where the TAG goes ('-' for none)"; return ;;
  esac
  local prefix=$model
  [ "$tag" != "-" ] && prefix="${model}_${tag}"
  local base="$RUNS/${model}_base/checkpoints/baseline"
  local common=(--config.train.init_checkpoint="$base"
                "--config.eval.adc_bits=(4, 6)" "$@")
  case "$variant" in
    prune) run "${prefix}_prune_p${p}" "$model" "${common[@]}" \
        --config.prune.ratio="$p" --config.share.k=1024 \
        --config.share.steps=0 ;;
    share) run "${prefix}_share_k${k}" "$model" "${common[@]}" \
        --config.prune.ratio=0.0 --config.share.k="$k" ;;
    paper|ste) run "${prefix}_${variant}_p${p}_k${k}" "$model" \
        "${common[@]}" --config.prune.ratio="$p" --config.share.k="$k" \
        --config.share.method="$variant" ;;
    *) echo "$(date +%T) unknown variant $variant" ;;
  esac
}

# Waits until MODEL's baseline is trained (its state.json has 'train');
# fails if the base run is gone without it or the deadline passed.
base_ready() {
  local model=$1
  while true; do
    if grep -q '"train"' "$RUNS/${model}_base/state.json" 2>/dev/null; then
      return 0
    fi
    if [ -f "$RUNS/${model}_base.done" ] || [ "$(left)" -lt 20 ]; then
      return 1
    fi
    sleep 2
  done
}

fmnist() {
  if [ -z "${NO_PAUSE:-}" ]; then
    cut -d' ' -f5 "/proc/$$/stat" > "$RUNS/fmnist.pgid"  # our process group
  fi
  for m in $MODELS; do
    # shellcheck disable=SC2086
    (run "${m}_base" "$m" $BASE_EXTRA; touch "$RUNS/${m}_base.done") &
  done
  local n=0
  while read -r model variant p k tag flags; do
    [ -z "$model" ] && continue
    n=$((n + 1))
    [ "$n" -gt "$POINTS_LIMIT" ] && break
    if ! base_ready "$model"; then
      echo "$(date +%T) no baseline for $model: $variant $p $k skipped"
      continue
    fi
    while [ "$(jobs -rp | wc -l)" -ge $((MAX_JOBS + 2)) ]; do
      wait -n
    done
    # shellcheck disable=SC2086  # the flags are split into words on purpose
    point "$model" "$variant" "$p" "$k" "${tag:--}" $flags &
  done <<< "$POINTS"
  wait
  echo "$(date +%T) fashion-mnist part finished"
}

if [ "${1:-}" = "--fmnist" ]; then
  fmnist
  exit 0
fi

START=$(date +%s)
export DEADLINE=$((START + BUDGET_S))
mkdir -p "$RUNS" "$OUT"
OUT=$(cd "$OUT" && pwd); export OUT  # the packing runs in $RUNS
echo "$(date -u +%FT%TZ) start; deadline in ${BUDGET_S}s"

if [ -n "${WHEELS:-}" ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -n "${LINK_KERNELS:-}" ] && [ ! -e rsjax/kernels ]; then
  ln -s ../kernels rsjax/kernels
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  2>/dev/null || true
"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())"

"$PYTHON" -c "
from experiments import data
data.prepare('fashion_mnist', data_dir='$DATA_DIR', source_dir='$SOURCE_DIR')
print('fashion_mnist prepared in $DATA_DIR')" 2>&1 | grep -v '^\s*$' | tail -2

if command -v setsid > /dev/null; then
  setsid bash "$0" --fmnist > "$RUNS/fmnist.log" 2>&1 &
else  # same process group as the benchmarks: they must not stop it
  NO_PAUSE=1 bash "$0" --fmnist > "$RUNS/fmnist.log" 2>&1 &
fi
FMNIST_PID=$!
for _ in $(seq 50); do [ -s "$RUNS/fmnist.pgid" ] && break; sleep 0.2; done

SWEEP_PIDS=()
for sweep_run in ${SWEEP_RUNS:-}; do
  if [ ! -f "$sweep_run/compressed_model.npz" ]; then
    echo "$(date +%T) no sweep of $sweep_run: not a finished run"
    continue
  fi
  RUN="$sweep_run" LIMIT="${SWEEP_LIMIT:-2000}" BATCH="${SWEEP_BATCH:-500}" \
    CALIBRATION="${SWEEP_CALIBRATION:-1000}" \
    PARALLEL="${SWEEP_PARALLEL:-6}" SWEEPS="$RUNS/sweeps" \
    PARTS_DIR="$RUNS/sweep_parts" \
    DATA_DIR="$DATA_DIR" SOURCE_DIR="$SOURCE_DIR" PYTHON="$PYTHON" \
    bash "$(dirname "$0")/results_sweeps_parts.sh" \
    > "$RUNS/sweeps_$(basename "$sweep_run").log" 2>&1 &
  SWEEP_PIDS+=($!)
done

BENCH_PIDS=()
for c in $BENCH_CONFIGS; do
  # shellcheck disable=SC2086
  timeout -k 5 "$BENCH_TIMEOUT" "$PYTHON" -m \
    experiments.benchmarks.config_runtime_bench \
    --config="experiments/configs/$c.py" --json_out="$RUNS/bench_$c.json" \
    --lock_file="$RUNS/bench.lock" --pause_pgid_file="$RUNS/fmnist.pgid" \
    $BENCH_EXTRA > "$RUNS/bench_$c.log" 2>&1 &
  BENCH_PIDS+=($!)
done
for i in "${!BENCH_PIDS[@]}"; do
  wait "${BENCH_PIDS[$i]}"
  echo "$(date +%T) bench $(echo $BENCH_CONFIGS | cut -d' ' -f$((i + 1))) exit $?"
done
# Never leave the Fashion-MNIST runs stopped.
[ -s "$RUNS/fmnist.pgid" ] && kill -CONT -- "-$(cat "$RUNS/fmnist.pgid")" \
  2>/dev/null
for c in $BENCH_CONFIGS; do
  echo "== $c"; grep -v '^[IWE][0-9]\{4\} ' "$RUNS/bench_$c.log" | tail -12
done

wait "$FMNIST_PID"
cat "$RUNS/fmnist.log"
for pid in ${SWEEP_PIDS[@]+"${SWEEP_PIDS[@]}"}; do
  wait "$pid"
done
for sweep_run in ${SWEEP_RUNS:-}; do
  tail -5 "$RUNS/sweeps_$(basename "$sweep_run").log" 2>/dev/null
done
if [ -d "$RUNS/sweeps" ]; then
  (cd "$RUNS" && tar czf "$OUT/sweeps.tgz" sweeps sweep_parts ./sweeps_*.log \
     2>/dev/null)
fi
echo "$(date +%T) packing ($(( $(date +%s) - START ))s since start)"
pack_finished
# Every run's log and state (unfinished ones too), the benchmark output.
(cd "$RUNS" && tar czf "$OUT/logs.tgz" --exclude=checkpoints \
   --exclude='*.npz' --exclude='*.png' ./*.log ./*/state.json ./*/log.txt \
   $(ls bench_*.json 2>/dev/null) 2>/dev/null)
(cd "$RUNS" && ls resnet20_base/checkpoints/baseline >/dev/null 2>&1 && \
   tar czf "$OUT/resnet20_base_ckpt.tgz" resnet20_base/checkpoints/baseline)
ls -la "$OUT"
echo "$(date +%T) end ($(( $(date +%s) - START ))s)"
