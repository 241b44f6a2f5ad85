#!/usr/bin/env bash
# The whole emulation study of one finished run (experiments/sweeps.py), in
# parts: one process per (OU height, cell bits) grid row, one for the
# index-and-add equality and one per fault setting (16 seeds each), PARALLEL
# at a time; then merged into one JSON for experiments.sweep_report.
#
# Meant for the large models (VGG-8, ResNet-20), whose full study takes
# CPU-hours here: on a GPU the parts run side by side (their compiles on
# the host's cores); on a CPU, a part at a time over several sessions (a
# part whose JSON exists is skipped, so rerunning the same command resumes).
#
# Usage (repository root):
#   RUN=runs/vgg8_bn_lk_ste_p0.5_k4 LIMIT=2000 PARALLEL=12 \
#     bash experiments/configs/results_sweeps_parts.sh
#   python -m experiments.sweep_report --sweeps_dir=runs/sweeps --out=RESULTS.md
#
# Settings (environment):
#   RUN          the finished run (required)
#   NAME         the merged file's name (the run's folder name + _full)
#   LIMIT        test images (2000); CALIBRATION training images (1000)
#   BATCH        emulation batch (500); SEEDS per fault setting (16)
#   OU_ROWS      "8 9 16 32"; CELL_BITS "1 2 4"; ADC_BITS "3,4,5,6,7,8"
#   STUCK        "0.001 0.005 0.01 0.02 0.05"; SIGMAS "0.05 0.1 0.2 0.3 0.5"
#   STUDIES      "grid equality faults"; PARALLEL processes (1)
#   SWEEPS       the merged file's folder (runs/sweeps)
#   PARTS        the parts' folder (PARTS_DIR/NAME_<LIMIT, CALIBRATION,
#                SEEDS, ADC_BITS>, so parts of other settings are not
#                reused; PARTS_DIR runs/sweep_parts)
#   DATA_DIR, SOURCE_DIR  override the run's data locations
#   PYTHON (python3); TIMEOUT seconds per part (0: none)
#   DEADLINE     epoch seconds: parts are killed then, none starts within
#                20 s of it; the finished ones are merged, the rest named
#                in the merged file ('missing_parts') and the exit status 1
set -u
: "${RUN:?RUN=the workdir of a finished pipeline run}"
NAME=${NAME:-$(basename "$RUN")_full}
LIMIT=${LIMIT:-2000}
CALIBRATION=${CALIBRATION:-1000}
BATCH=${BATCH:-500}
SEEDS=${SEEDS:-16}
OU_ROWS=${OU_ROWS:-8 9 16 32}
CELL_BITS=${CELL_BITS:-1 2 4}
ADC_BITS=${ADC_BITS:-3,4,5,6,7,8}
STUCK=${STUCK:-0.001 0.005 0.01 0.02 0.05}
SIGMAS=${SIGMAS:-0.05 0.1 0.2 0.3 0.5}
STUDIES=${STUDIES:-grid equality faults}
PARALLEL=${PARALLEL:-1}
case "$PARALLEL" in
  ''|*[!0-9]*|0) echo "PARALLEL must be a whole number >= 1, got '$PARALLEL'"
                 exit 1 ;;
esac
SWEEPS=${SWEEPS:-runs/sweeps}
# The settings are in the parts' folder name, so a rerun with other ones
# does not take (and merge) parts measured with these.
PARTS_DIR=${PARTS_DIR:-runs/sweep_parts}
PARTS=${PARTS:-$PARTS_DIR/${NAME}_n${LIMIT}_cal${CALIBRATION}_seeds${SEEDS}_adc${ADC_BITS//,/-}}
PYTHON=${PYTHON:-python3}
TIMEOUT=${TIMEOUT:-0}
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
mkdir -p "$PARTS" "$SWEEPS"

data_flags=()
[ -n "${DATA_DIR:-}" ] && data_flags+=(--data_dir="$DATA_DIR")
[ -n "${SOURCE_DIR:-}" ] && data_flags+=(--source_dir="$SOURCE_DIR")

# Builds the dataset once, before parallel parts would race to build it.
"$PYTHON" - "$RUN" "${DATA_DIR:-}" "${SOURCE_DIR:-}" <<'EOF' || exit 1
import json, os, sys
from experiments import data
run, data_dir, source_dir = sys.argv[1:]
with open(os.path.join(run, "config.json")) as f:
  dc = json.load(f)["data"]
data.prepare(dc["name"], data_dir=data_dir or dc["data_dir"] or None,
             source_dir=source_dir or dc["source_dir"])
EOF

# part FILE_STEM FLAG...: one sweeps process, skipped if its JSON exists.
part() {
  local stem=$1
  shift
  if [ -f "$PARTS/$stem.json" ]; then
    echo "skip $stem (done)"
    return
  fi
  local t=$TIMEOUT
  if [ -n "${DEADLINE:-}" ]; then
    local left=$(( DEADLINE - $(date +%s) ))
    if [ "$left" -lt 20 ]; then
      echo "$(date +%T) not started $stem (deadline)"
      return
    fi
    { [ "$t" = 0 ] || [ "$t" -gt "$left" ]; } && t=$left
  fi
  local limit=()
  [ "$t" != 0 ] && limit=(timeout -k 5 "$t")
  echo "$(date +%T) start $stem"
  # ${a[@]+"${a[@]}"}: an empty array is an unbound variable under set -u
  # in bash before 4.4.
  if ${limit[@]+"${limit[@]}"} "$PYTHON" -m experiments.sweeps --run="$RUN" \
      --out="$PARTS/$stem.json" --limit="$LIMIT" \
      --calibration="$CALIBRATION" --batch_size="$BATCH" \
      --adc_bits="$ADC_BITS" --seeds="$SEEDS" \
      ${data_flags[@]+"${data_flags[@]}"} "$@" \
      > "$PARTS/$stem.log" 2>&1; then
    echo "$(date +%T) done $stem"
  else
    echo "$(date +%T) FAILED $stem (see $PARTS/$stem.log)"
  fi
}

# The parts, most informative first.
jobs_list=()
for study in $STUDIES; do
  case "$study" in
    grid)
      for o in $OU_ROWS; do
        for c in $CELL_BITS; do
          jobs_list+=("grid_o${o}_c${c} --studies=grid --ou_rows=$o --cell_bits=$c")
        done
      done ;;
    equality) jobs_list+=("equality --studies=equality") ;;
    faults)
      for r in $STUCK; do
        jobs_list+=("faults_stuck$r --studies=faults --stuck_rates=$r --program_sigmas=")
      done
      for s in $SIGMAS; do
        jobs_list+=("faults_sigma$s --studies=faults --stuck_rates= --program_sigmas=$s")
      done ;;
    *) echo "unknown study $study (grid, equality, faults)"; exit 1 ;;
  esac
done

for job in "${jobs_list[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do
    wait -n
  done
  # shellcheck disable=SC2086
  part $job &
done
wait

shopt -s nullglob
files=()
missing=()
for job in "${jobs_list[@]}"; do
  stem=${job%% *}
  if [ -f "$PARTS/$stem.json" ]; then
    files+=("$PARTS/$stem.json")
  else
    missing+=("$stem")
  fi
done
if [ ${#files[@]} -eq 0 ]; then
  echo "no part finished"
  exit 1
fi
list=$(IFS=,; echo "${files[*]}")
gone=$(IFS=,; echo "${missing[*]+${missing[*]}}")
"$PYTHON" -m experiments.sweeps --merge="$list" --merge_missing="$gone" \
  --out="$SWEEPS/$NAME.json" || exit 1
echo "$(date +%T) merged ${#files[@]} parts into $SWEEPS/$NAME.json" \
  "(${#missing[@]} missing${gone:+: $gone})"
[ ${#missing[@]} -eq 0 ]
