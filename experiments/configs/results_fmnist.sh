#!/usr/bin/env bash
# Fashion-MNIST runs behind RESULTS.md (issue 6): MLP and LeNet-5, float
# baseline, prune only, share only, prune + share ('paper' and 'ste'), and
# the same with BatchNorm kept through sharing (compress.fold_bn=False,
# MODEL_bn_* runs). ResNet-20 and VGG-8: results_fmnist_gpu.sh.
#
# Usage (from the repository root):
#   nohup bash experiments/configs/results_fmnist.sh > runs/results_fmnist.log 2>&1 &
#   python -m experiments.results --runs_dir=runs --out=RESULTS.md
#
# Each point is one workdir runs/MODEL_VARIANT_p<prune>_k<k>; a finished one
# (results.json present) is skipped, an unfinished one resumes (the pipeline
# checkpoints every stage), so the script can be rerun after an interruption.
# Compression points reuse their model's float baseline through
# --config.train.init_checkpoint (no retraining).
#
# "Prune only" uses share.steps=0 and share.k=1024: k is clamped per
# row-block to its number of column groups, so one-shot k-means keeps every
# non-pruned block as its own centroid (no sharing); the centroid fine-tune
# then fine-tunes the pruned weights with the pruned blocks held at zero.
# "Share only" is prune.ratio=0.
#
# The points are ordered so that an interrupted run still has two points of
# every variant for both models; the third and the extra points come last.
set -u
RUNS=${RUNS:-runs}
mkdir -p "$RUNS"

config_of() {
  case "$1" in
    mlp) echo experiments/configs/fashion_mnist_mlp.py ;;
    lenet5) echo experiments/configs/default.py ;;
    resnet20) echo experiments/configs/fashion_mnist_resnet20.py ;;
  esac
}

# run NAME MODEL [--config.x=y ...]
run() {
  local name=$1 model=$2
  shift 2
  if [ -f "$RUNS/$name/results.json" ]; then
    echo "skip $name (done)"
    return
  fi
  echo "$(date +%T) start $name"
  python -m experiments.main --config="$(config_of "$model")" \
    --workdir="$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1 \
    && echo "$(date +%T) done $name" || echo "$(date +%T) FAILED $name"
}

# point MODEL VARIANT PRUNE K [SEED]: a SEED (other than the config's 0)
# adds --config.seed and '_s<SEED>' to the name.
point() {
  local model=$1 variant=$2 p=$3 k=$4 seed=${5:-}
  local base="$RUNS/${model}_base/checkpoints/baseline"
  local name flags=(--config.train.init_checkpoint="$base")
  case "$variant" in
    prune) name="${model}_prune_p${p}"
      flags+=(--config.prune.ratio="$p" --config.share.k=1024
              --config.share.steps=0) ;;
    share) name="${model}_share_k${k}"
      flags+=(--config.prune.ratio=0.0 --config.share.k="$k") ;;
    paper|ste) name="${model}_${variant}_p${p}_k${k}"
      flags+=(--config.prune.ratio="$p" --config.share.k="$k"
              --config.share.method="$variant") ;;
    # BatchNorm kept (compress.fold_bn=False): kernels shared before BN.
    bn_share) name="${model}_bn_share_k${k}"
      flags+=(--config.prune.ratio=0.0 --config.share.k="$k"
              --config.compress.fold_bn=False) ;;
    bn_paper|bn_ste) name="${model}_${variant}_p${p}_k${k}"
      flags+=(--config.prune.ratio="$p" --config.share.k="$k"
              --config.share.method="${variant#bn_}"
              --config.compress.fold_bn=False) ;;
    *) echo "unknown variant $variant"; return ;;
  esac
  if [ -n "$seed" ]; then
    name="${name}_s${seed}"
    flags+=(--config.seed="$seed")
  fi
  run "$name" "$model" "${flags[@]}"
}

two_points() {
  local m=$1
  point "$m" prune 0.5 0
  point "$m" share 0 4
  point "$m" paper 0.3 8
  point "$m" ste 0.3 8
  point "$m" prune 0.7 0
  point "$m" share 0 2
  point "$m" paper 0.6 4
  point "$m" ste 0.6 4
}

third_point() {
  local m=$1
  point "$m" ste 0.8 2
  point "$m" paper 0.8 2
  point "$m" prune 0.85 0
  point "$m" share 0 1
}

# Milder points, added once the first ones showed the MLP's sharing losses
# (its 784-input layers have 38 column groups per row-block, so k = 8 is
# already a 4.75x share).
extra_points() {
  case "$1" in
    mlp)
      point mlp share 0 16
      point mlp paper 0.3 16
      point mlp ste 0.3 16
      point mlp paper 0.5 16 ;;
    lenet5)
      point lenet5 paper 0.5 8
      point lenet5 ste 0.5 8
      point lenet5 share 0 8
      point lenet5 prune 0.3 0 ;;
  esac
}

# The same points with BatchNorm kept through sharing (added after VGG-8
# lost 10-17 pp sharing BN-folded kernels, see RESULTS.md).
bn_points() {
  point "$1" bn_share 0 4
  point "$1" bn_paper 0.6 4
  point "$1" bn_share 0 2
  point "$1" bn_share 0 8
  point "$1" bn_paper 0.3 8
}

# Milder and in-between "BN kept" points, added once the first ones lost
# less than their BN-folded twins, in the order they ran.
bn_extra_points() {
  point mlp bn_paper 0.5 16
  point mlp bn_share 0 16
  point mlp bn_paper 0.5 12
  point lenet5 bn_share 0 6
  point mlp bn_paper 0.5 10
  point mlp bn_paper 0.5 8
  point mlp bn_paper 0.6 6
  point lenet5 bn_paper 0.3 6
}

run mlp_base mlp
two_points mlp
run lenet5_base lenet5
two_points lenet5
third_point mlp
third_point lenet5
extra_points mlp
extra_points lenet5
bn_points mlp
bn_points lenet5
bn_extra_points
# The two CPU headlines again with seeds 1 and 2 (k-means keys and batch
# order; the baseline is the same): how much one seed tells.
seed_points() {
  local seed
  for seed in 1 2; do
    point lenet5 bn_share 0 8 "$seed"
    point mlp bn_paper 0.5 10 "$seed"
  done
}
seed_points
# Seeds 1 and 2 of the rest of the BN-kept Pareto points of both models
# (the "Seeds" table of RESULTS.md: mean ± std per point).
more_seed_points() {
  local seed
  for seed in 1 2; do
    point lenet5 bn_share 0 6 "$seed"
    point mlp bn_paper 0.5 12 "$seed"
    point lenet5 bn_share 0 4 "$seed"
    point mlp bn_paper 0.5 16 "$seed"
    point mlp bn_share 0 8 "$seed"
    point lenet5 bn_paper 0.3 8 "$seed"
    point mlp bn_paper 0.5 8 "$seed"
  done
}

# Knowledge distillation from the float baseline (compress.distill_weight=W,
# temperature 4) at BN-kept points that lost more than 0.5 pp without it:
# kd_point MODEL VARIANT PRUNE K W, named MODEL_bn_kdW_VARIANT_p<prune>_k<k>
# (share: MODEL_bn_kdW_share_k<k>).
kd_point() {
  local model=$1 variant=$2 p=$3 k=$4 w=$5
  local base="$RUNS/${model}_base/checkpoints/baseline"
  local name="${model}_bn_kd${w}_${variant}_p${p}_k${k}"
  [ "$variant" = share ] && name="${model}_bn_kd${w}_share_k${k}"
  run "$name" "$model" --config.train.init_checkpoint="$base" \
    --config.prune.ratio="$p" --config.share.k="$k" \
    --config.share.method="$([ "$variant" = share ] && echo ste || echo "$variant")" \
    --config.compress.fold_bn=False --config.compress.distill_weight="$w"
}
kd_points() {
  kd_point lenet5 share 0 4 0.7
  kd_point mlp paper 0.6 4 0.7
  kd_point lenet5 share 0 6 0.7
  kd_point mlp paper 0.5 8 0.7
  kd_point mlp paper 0.6 6 0.7
  kd_point lenet5 share 0 2 0.7
  kd_point mlp share 0 4 0.7
}
kd_points
more_seed_points

# ResNet-20 with BN kept: two points on the CPU (35-55 min each on 2 cores
# shared with other runs), from the baseline results_fmnist_gpu.sh trained.
if [ -d "$RUNS/resnet20_base/checkpoints/baseline" ]; then
  for k in 4 8; do
    run "resnet20_bn_share_k$k" resnet20 \
      --config.train.init_checkpoint="$RUNS/resnet20_base/checkpoints/baseline" \
      --config.prune.ratio=0.0 --config.share.k="$k" \
      --config.compress.fold_bn=False "--config.eval.adc_bits=(4, 6)"
  done
fi
