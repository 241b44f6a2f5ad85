#!/usr/bin/env bash
# Emulation sweeps behind RESULTS.md (issue 6): ADC bits x OU height x cell
# bits, index-and-add vs dense, stuck-at faults and programming variation
# (16 seeds), on the compressed models of finished runs.
#
# Usage (from the repository root, after results_fmnist.sh and, for
# ResNet-20, results_fmnist_gpu.sh):
#   nohup bash experiments/configs/results_sweeps.sh > runs/sweeps.log 2>&1 &
#   python -m experiments.sweep_report --sweeps_dir=runs/sweeps --out=RESULTS.md
#
# A sweep whose JSON exists is skipped. Times on the 2-core CPU are in
# RESULTS.md (each JSON records its own).
set -u
RUNS=${RUNS:-runs}
mkdir -p "$RUNS/sweeps"

# sweep RUN [flags...]
sweep() {
  local name=$1
  shift
  if [ -f "$RUNS/sweeps/$name.json" ]; then
    echo "skip $name (done)"
    return
  fi
  if [ ! -f "$RUNS/$name/compressed_model.npz" ]; then
    echo "skip $name (no finished run)"
    return
  fi
  echo "$(date +%T) start $name"
  python -m experiments.sweeps --run="$RUNS/$name" \
    --out="$RUNS/sweeps/$name.json" "$@" > "$RUNS/sweeps/$name.log" 2>&1 \
    && echo "$(date +%T) done $name" || echo "$(date +%T) FAILED $name"
}

# The full study on the main job's model (LeNet-5, prune 0.3 + STE k = 8)
# and on the MLP's prune 0.5 + paper k = 16 point: 2000 test images, 16
# fault seeds.
sweep lenet5_base
sweep mlp_paper_p0.5_k16

# ResNet-20 emulates about 10x slower than LeNet-5 on the CPU: 500 images.
# First the grid at the run's own hardware (9-row OUs, 2-bit cells) and the
# index-and-add equality; then, in files of their own, the whole OU/cell
# grid and the fault study (16 seeds, all ten settings).
sweep resnet20_base --limit=500 --ou_rows=9 --cell_bits=2 \
  --studies=grid,equality
# resnet20_study NAME FLAGS...: one more study of resnet20_base into sweeps/NAME.json.
resnet20_study() {
  local name=$1
  shift
  [ -f "$RUNS/sweeps/$name.json" ] && { echo "skip $name (done)"; return; }
  [ -f "$RUNS/resnet20_base/compressed_model.npz" ] || return
  echo "$(date +%T) start $name"
  python -m experiments.sweeps --run="$RUNS/resnet20_base" \
    --out="$RUNS/sweeps/$name.json" --limit=500 "$@" \
    > "$RUNS/sweeps/$name.log" 2>&1 \
    && echo "$(date +%T) done $name" || echo "$(date +%T) FAILED $name"
}
resnet20_study resnet20_base_grid --studies=grid
resnet20_study resnet20_base_faults --studies=faults

# VGG-8's highest-ratio point (BN kept, conv1 and head unshared, prune 0.5
# + STE k = 4: 69.04x; trained on the GPU, results_fmnist_gpu_bn.sh): the
# whole study in parts (results_sweeps_parts.sh, resumable part by part;
# times on this 2-core CPU, two studies side by side for most of them).
# 8- and 9-row OUs tabulate their ADC outputs (the streamed table for the
# large layers, about 4 s a plan per 100 images): the grid and the
# index-and-add equality on 500 images (27 min), the ten fault settings x
# 16 seeds x 2 layouts on 200. 16- and 32-row OUs have too many input
# patterns to tabulate and run the direct path (about 10x slower): their
# grid on 100 images.
vgg8=vgg8_bn_lk_ste_p0.5_k4
if [ -f "$RUNS/$vgg8/compressed_model.npz" ]; then
  parts() {
    env RUN="$RUNS/$vgg8" CALIBRATION=500 SWEEPS="$RUNS/sweeps" \
      PARTS_DIR="$RUNS/sweep_parts" "$@" \
      bash experiments/configs/results_sweeps_parts.sh
  }
  parts NAME=${vgg8}_full LIMIT=500 BATCH=500 STUDIES="grid equality" \
    OU_ROWS="8 9"
  parts NAME=${vgg8}_faults LIMIT=200 BATCH=200 STUDIES=faults
  parts NAME=${vgg8}_grid_o16_o32 LIMIT=100 BATCH=100 STUDIES=grid \
    OU_ROWS="32 16" CELL_BITS="4 2 1"
fi
