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

# ResNet-20 emulates about 10x slower than LeNet-5 on the CPU: 500 images,
# the grid at the run's own hardware (9-row OUs, 2-bit cells) and the
# index-and-add equality; no fault study.
sweep resnet20_base --limit=500 --ou_rows=9 --cell_bits=2 \
  --studies=grid,equality
# Its fault study (16 seeds, 500 images, two settings) in its own file.
if [ ! -f "$RUNS/sweeps/resnet20_base_faults.json" ]; then
  python -m experiments.sweeps --run="$RUNS/resnet20_base" \
    --out="$RUNS/sweeps/resnet20_base_faults.json" --limit=500 \
    --studies=faults --stuck_rates=0.01 --program_sigmas=0.2 \
    > "$RUNS/sweeps/resnet20_base_faults.log" 2>&1
fi

# VGG-8's highest-ratio point (BN kept, conv1 and head unshared, prune 0.5
# + STE k = 4: 69.04x; trained on the GPU, results_fmnist_gpu_bn.sh). It
# emulates about 10x slower than ResNet-20 here (a run with 300 images and
# the equality study too was stopped after an hour): 200 images, its own
# hardware's ADC sweep only.
sweep vgg8_bn_lk_ste_p0.5_k4 --limit=200 --batch_size=100 --calibration=500 \
  --ou_rows=9 --cell_bits=2 --studies=grid
