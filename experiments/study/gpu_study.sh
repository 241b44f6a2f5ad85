#!/usr/bin/env bash
# One GPU window: install what is missing, then experiments/study/gpu_study.py
# (the VGG-8 study, the GPU benchmarks, the quickstart, the emulation).
#
#   bash experiments/study/gpu_study.sh --out=gpu_study [--budget_s=540] [...]
#   bash experiments/study/gpu_study.sh --out=/tmp/rehearsal --dry_run   # CPU
#
# Run it from a checkout of the repository; every flag goes to
# experiments/study/gpu_study.py. The budget counts from this script's start, the
# install included. $PYTHON picks the interpreter (default python3).
#
# The install is skipped when everything imports and, on a machine with an
# NVIDIA GPU, JAX already runs on it; otherwise it is the usual
#   pip install -e '.[experiments,notebooks]'     (+ ',cuda' where JAX has
#                                                  no GPU yet)
# Offline, pip reads a folder of wheels the usual way:
#   PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR bash experiments/study/gpu_study.sh ...
# If that install fails, rsjax alone is installed from the checkout (no
# dependencies, no build isolation) and the study runs on what is there; a
# missing package then fails with its name. A dry run installs nothing.
set -uo pipefail
started=$(date +%s)
cd "$(dirname "$0")/../.." || exit 1
PYTHON=${PYTHON:-python3}

dry_run=0
for arg in "$@"; do
  case $arg in --dry_run | --dry_run=true | --dry_run=True | --dry_run=1)
    dry_run=1 ;;
  esac
done

imports_ok() {
  "$PYTHON" -c "import rsjax.kernels, ml_collections, tensorflow_datasets, \
array_record, orbax.checkpoint, matplotlib, nbclient, nbformat, ipykernel" \
    2>/dev/null
}
jax_on_gpu() {
  "$PYTHON" -c "import jax; assert jax.default_backend() == 'gpu'" \
    2>/dev/null
}

if [ "$dry_run" = 1 ]; then
  echo "gpu_study.sh: dry run, nothing installed"
else
  extras=experiments,notebooks
  if command -v nvidia-smi >/dev/null 2>&1 && ! jax_on_gpu; then
    extras=$extras,cuda
  fi
  if [ "$extras" = experiments,notebooks ] && imports_ok; then
    echo "gpu_study.sh: everything imports, nothing installed"
  else
    echo "gpu_study.sh: pip install -e '.[$extras]'"
    "$PYTHON" -m pip install -q --retries 1 --timeout 15 -e ".[$extras]" || {
      echo "gpu_study.sh: that failed; installing rsjax alone"
      "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . ||
        echo "gpu_study.sh: that failed too; running on what is installed"
    }
  fi
  jax_on_gpu || echo "gpu_study.sh: warning: JAX does not run on a GPU"
fi
exec "$PYTHON" -m experiments.study.gpu_study --started_at="$started" "$@"
