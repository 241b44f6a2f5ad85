"""The VGG-8 study, the GPU benchmarks and the quickstart in one GPU window.

  bash experiments/study/gpu_study.sh --out=gpu_study     # a GPU machine
  bash experiments/study/gpu_study.sh --out=/tmp/rehearsal --dry_run   # a CPU

``experiments/study/gpu_study.sh`` installs what is missing and runs this module
(``--started_at`` is its start, so the budget counts the install too). Four
phases, in order of value, under one wall-clock deadline (``--budget_s``,
9 minutes by default); each starts only if its minimum time is left and is
stopped at the deadline:

1. ``study``: the grid's ``window`` group (experiments/configs/
   results_fmnist.py): ``vgg8_float`` (the float baseline alone), then
   uniform ``k`` = 4 and the per-layer ``k`` allocated for 64x, seeds 0-2,
   ``--parallel`` processes side by side (compilation and the one-shot
   stages are host-bound, so they overlap another run's training steps).
   Every run writes ``OUT/runs/NAME/results.json`` and its checkpoints as
   soon as it finishes; ``OUT/RESULTS.md`` and ``RESULTS.json`` then table
   the finished runs (headline, seeds, allocation beside uniform ``k``).
2. ``bench``: :mod:`experiments.benchmarks.gpu_bench` (``OUT/bench.json``,
   ``OUT/bench.txt``).
3. ``notebook``: ``notebooks/quickstart.ipynb`` executed in full
   settings, outputs kept (``OUT/quickstart.ipynb``).
4. ``emulate``: the ``window`` sweeps: each finished run's emulated accuracy
   (lossless ADC, index-and-add) on 2000 test images
   (``OUT/runs/sweeps/``). Last, so it never holds back the rest.

After every phase ``OUT/summary.json`` (provenance with the CPU and GPU, the
schedule and its expected time, each phase's status and seconds) and
``OUT/bundle.tar.gz`` (every file of ``OUT`` except checkpoints, model files
and the compilation cache: what to copy back) are rewritten, so a call cut
off at any point leaves what finished. Calling again with the same ``--out``
resumes: finished runs are skipped, a killed run resumes from its
checkpoints.

``--dry_run`` rehearses every phase on a CPU in about 2 minutes on 2 cores:
LeNet-5 in place of VGG-8 (the same recipes, the allocated runs at 16x;
VGG-8 compiles for minutes on a CPU), a few steps on a few hundred images,
seed 0 only, the benchmarks' small sizes, the notebook up to its imports,
50 emulated images.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import tarfile
import time
from typing import Any, Callable, Mapping, Sequence

from experiments.study import grid as grid_lib

log = logging.getLogger(__name__)

GRID = "experiments/study/fashion_mnist_grid.py"
GROUP = "window"
PHASES = ("study", "bench", "notebook", "emulate")
NOTEBOOK = "notebooks/quickstart.ipynb"
# Seconds a phase needs at least to be worth starting (a real run / a dry
# run); below that it is reported as skipped for want of time.
MIN_SECONDS = {"study": (60, 10), "bench": (40, 10), "notebook": (45, 10),
               "emulate": (45, 10)}
# Seconds kept back at the end for the summary and the bundle.
TAIL_S = 10

# What --dry_run sets on every run of the study: LeNet-5 (its layer names
# match the window's rules), a few steps, a few hundred images.
DRY_RUN_CONFIG = {
    "model.name": "lenet5", "train.steps": 3, "share.steps": 2,
    "finetune.steps": 2, "train.batch_size": 16,
    "train.eval_batch_size": 100, "data.train_limit": 512,
    "data.eval_limit": 200, "train.log_every": 1,
    "train.checkpoint_every": 1, "share.n_init": 1,
    "share.allocate_examples": 64}
# LeNet-5 reaches about 33x at most with the window's rules: the allocated
# runs aim lower in a dry run.
DRY_RUN_ALLOCATE = 16.0
DRY_RUN_SWEEP = {"limit": 50, "calibration": 32, "batch_size": 50}
# A dry run executes the notebook up to its imports: the kernel, the
# environment and the parameters, in seconds (tests/notebooks_test.py runs
# the whole notebook on a CPU).
DRY_RUN_NOTEBOOK_CELLS = 4


@dataclasses.dataclass(frozen=True)
class Rates:
  """What the schedule is sized from: VGG-8 at batch 128 on one GPU.

  The defaults are the step rates and compile/one-shot times that
  experiments/benchmarks/CONFIG_RUNTIME.md records for the accelerator it
  names, with their command (``experiments/benchmarks/
  config_runtime_bench.py``); ``slowdown`` scales them to the GPU at hand.
  The one-shot stages (prune, initial k-means, projection, fine-tune init)
  and compilation run on the host, and are sized as upper bounds (a host
  shared by many processes, see that file), since several runs share it.

  Attributes:
    train, share, finetune: steps/s of each stage.
    startup_s: process start, imports, data and the float evaluation.
    base_compile_s: the baseline's train and eval compiles.
    point_host_s: a compression run's host work: its compiles (share,
      fine-tune, eval: 29.6 s), prune (19.9), k-means (15.1), projection
      (5.3) and fine-tune init (29.0).
    slowdown: step times of the GPU at hand against the recorded ones.
  """

  train: float = 113.4
  share: float = 79.5
  finetune: float = 117.9
  startup_s: float = 20.0
  base_compile_s: float = 14.2
  point_host_s: float = 99.0
  slowdown: float = 1.0


def plan(base_steps: int, share_steps: int, finetune_steps: int,
         runs: int, parallel: int, rates: Rates = Rates()) -> dict[str, Any]:
  """The study's expected seconds (a dict, also printed).

  The baseline trains alone. The compression runs go ``parallel`` at a
  time: ``best`` assumes their training steps share the GPU without
  slowing each other (the GPU not saturated by one run), ``worst`` that
  they run one after another on it (the GPU saturated), with every run's
  host work overlapped either way.

  Raises:
    ValueError: no runs, or ``parallel`` < 1.
  """
  if runs < 1 or parallel < 1:
    raise ValueError(f"runs ({runs}) and parallel ({parallel}) must be >= 1")
  s = rates.slowdown
  base = (rates.startup_s + rates.base_compile_s
          + base_steps / rates.train * s)
  device = (share_steps / rates.share + finetune_steps / rates.finetune) * s
  waves = math.ceil(runs / parallel)
  host = rates.startup_s + rates.point_host_s
  best = base + waves * (host + device)
  worst = base + waves * host + runs * device
  return {"base_s": round(base), "device_s_per_run": round(device, 1),
          "runs": runs, "parallel": parallel, "waves": waves,
          "host_s_per_run": round(host), "best_s": round(best),
          "worst_s": round(worst)}


def study_grid(seeds: Sequence[int], dry_run: bool,
               extra: Mapping[str, Any]) -> grid_lib.Grid:
  """The ``window`` group for ``seeds``, with the dry-run settings and
  ``extra`` overrides on every run."""
  full = grid_lib.select(grid_lib.load_grid(GRID), group=GROUP)
  keep = lambda p: p.base is None or p.overrides.get("seed") in seeds
  config = {**(DRY_RUN_CONFIG if dry_run else {}), **extra}

  def settings(p):
    if dry_run and p.overrides.get("share.allocate_ou_ratio"):
      return {**config, "share.allocate_ou_ratio": DRY_RUN_ALLOCATE}
    return config

  points = [dataclasses.replace(p, overrides={**p.overrides, **settings(p)})
            for p in full.points if keep(p)]
  names = {p.name for p in points}
  sweeps = [dataclasses.replace(s, flags={**s.flags, **(
      DRY_RUN_SWEEP if dry_run else {})}) for s in full.sweeps
            if s.run in names]
  return grid_lib.Grid(points=points, sweeps=sweeps)


def schedule(study: grid_lib.Grid, parallel: int) -> dict[str, Any]:
  """:func:`plan` for the study's configured steps."""
  base = next(p for p in study.points if p.base is None).load_config()
  runs = [p.load_config() for p in study.points if p.base is not None]
  if not runs:
    raise ValueError("no compression runs selected (check --seeds)")
  share = {c.share.steps for c in runs}
  finetune = {c.finetune.steps for c in runs}
  if len(share) > 1 or len(finetune) > 1:
    raise ValueError(f"the runs' schedules differ: share {share}, "
                     f"fine-tune {finetune}")
  return {"train_steps": base.train.steps, "share_steps": share.pop(),
          "finetune_steps": finetune.pop(),
          **plan(base.train.steps, runs[0].share.steps,
                 runs[0].finetune.steps, len(runs), parallel)}


class Window:
  """The deadline and the record of one call (``OUT/summary.json``)."""

  def __init__(self, out: str, deadline: float, dry_run: bool):
    self.out, self.deadline, self.dry_run = out, deadline, dry_run
    self.summary: dict[str, Any] = {"phases": {}}

  def left(self) -> float:
    return self.deadline - TAIL_S - time.time()

  def run(self, phase: str, fn: Callable[[float], dict[str, Any]]) -> None:
    """Runs ``fn(deadline)`` if its minimum time is left; records it."""
    need = MIN_SECONDS[phase][1 if self.dry_run else 0]
    if self.left() < need:
      self.record(phase, {"status": f"skipped: {self.left():.0f} s left, "
                                    f"it needs at least {need} s"})
      return
    t0 = time.time()
    log.info("phase %s (%.0f s left)", phase, self.left())
    try:
      result = fn(self.deadline - TAIL_S)
    except Exception as e:  # pylint: disable=broad-except
      # One phase failing must not lose the others' results.
      log.exception("phase %s failed", phase)
      result = {"status": f"failed: {type(e).__name__}: {e}"}
    result["seconds"] = round(time.time() - t0, 1)
    self.record(phase, result)

  def record(self, phase: str, result: dict[str, Any]) -> None:
    log.info("phase %s: %s", phase, result.get("status"))
    self.summary["phases"][phase] = result
    self.write()

  def write(self) -> None:
    from experiments import workdir  # pylint: disable=g-import-not-at-top
    workdir.write_file(os.path.join(self.out, "summary.json"),
                         json.dumps(self.summary, indent=1) + "\n")
    bundle(self.out)

  @property
  def ok(self) -> bool:
    return all(p.get("status") == "done"
               for p in self.summary["phases"].values())


# Not in the bundle: large, and not needed to read the results.
_HEAVY = ("checkpoints", "jax_cache", "notebook_work")
_HEAVY_SUFFIXES = (".npz", ".tmp", ".tar.gz")


def bundle(out: str) -> str:
  """``OUT/bundle.tar.gz``: every file of ``out`` but the heavy ones."""
  path = os.path.join(out, "bundle.tar.gz")
  with tarfile.open(path + ".tmp", "w:gz") as tar:
    for root, dirs, files in os.walk(out):
      dirs[:] = sorted(d for d in dirs if d not in _HEAVY)
      for name in sorted(files):
        if not name.endswith(_HEAVY_SUFFIXES):
          full = os.path.join(root, name)
          tar.add(full, arcname=os.path.relpath(full, out))
  os.replace(path + ".tmp", path)
  return path


def study_phase(study: grid_lib.Grid, runs_dir: str, parallel: int,
                deadline: float) -> dict[str, Any]:
  finished = grid_lib.run_points(study, runs_dir, parallel, deadline)
  result = {"finished": sorted(n for n, ok in finished.items() if ok),
            "unfinished": sorted(n for n, ok in finished.items() if not ok)}
  if result["finished"]:
    from experiments.study import results  # pylint: disable=g-import-not-at-top
    try:
      results.write_report(runs_dir, os.path.join(
          os.path.dirname(runs_dir), "RESULTS.md"))
    except (ValueError, OSError) as e:
      result["report"] = f"failed: {e}"
  result["status"] = "done" if not result["unfinished"] else (
      "cut off" if time.time() >= deadline - 10 else "failed")
  return result


def subprocess_phase(command: list[str], log_path: str,
                     deadline: float) -> dict[str, Any]:
  """Runs ``command`` (output to ``log_path``) until the deadline."""
  with open(log_path, "w") as f:
    try:
      rc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT,
                          timeout=max(1.0, deadline - time.time()),
                          check=False).returncode
    except subprocess.TimeoutExpired:
      return {"status": "cut off"}
  return {"status": "done" if rc == 0 else f"failed: exit code {rc}"}


def bench_phase(out: str, dry_run: bool, deadline: float) -> dict[str, Any]:
  command = [sys.executable, "-m", "experiments.benchmarks.gpu_bench",
             f"--json_out={os.path.join(out, 'bench.json')}"]
  if dry_run:
    command.append("--dry_run")
  return subprocess_phase(command, os.path.join(out, "bench.txt"), deadline)


def notebook_phase(out: str, dry_run: bool,
                   deadline: float) -> dict[str, Any]:
  """Executes the quickstart; the executed notebook goes to ``out``, also
  when a cell fails or the deadline cuts it."""
  try:
    import nbclient  # pylint: disable=g-import-not-at-top
    import nbformat  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {"status": f"skipped: {e} (pip install -e '.[notebooks]')"}
  work = os.path.join(out, "notebook_work")
  os.makedirs(work, exist_ok=True)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  if dry_run:
    nb.cells = nb.cells[:DRY_RUN_NOTEBOOK_CELLS]
  # The kernel inherits the environment: the quick mode, and the checkout
  # on the path (the notebook imports experiments.data from it).
  os.environ["RSJAX_NOTEBOOK_QUICK"] = "1" if dry_run else "0"
  os.environ["PYTHONPATH"] = os.pathsep.join(
      p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
  client = nbclient.NotebookClient(
      nb, kernel_name="python3",
      timeout_func=lambda cell: max(1, int(deadline - time.time())),
      resources={"metadata": {"path": work}})
  try:
    client.execute()
    status = "done"
  except nbclient.exceptions.CellTimeoutError:
    status = "cut off"
  except nbclient.exceptions.CellExecutionError as e:
    status = f"failed: {str(e).splitlines()[-1] if str(e) else e}"
  finally:
    nbformat.write(nb, os.path.join(out, "quickstart.ipynb"))
  return {"status": status}


def emulate_phase(study: grid_lib.Grid, runs_dir: str, parallel: int,
                  deadline: float) -> dict[str, Any]:
  merged = grid_lib.run_sweeps(study, runs_dir, parallel, deadline)
  missing = sorted(s.name for s in study.sweeps if s.name not in merged)
  return {"status": "done" if not missing else "incomplete",
          "emulated": sorted(merged), "not_emulated": missing}


def parse_seeds(text: str) -> tuple[int, ...]:
  try:
    seeds = tuple(int(s) for s in text.split(",") if s.strip())
  except ValueError:
    raise ValueError(f"--seeds must be integers separated by commas, got "
                     f"{text!r}") from None
  if not seeds:
    raise ValueError("--seeds names no seed")
  return seeds


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  dry_run = _DRY_RUN.value
  phases = tuple(_PHASES.value)
  unknown = sorted(set(phases) - set(PHASES))
  if unknown:
    raise SystemExit(f"--phases: unknown {unknown}; known: {PHASES}")
  try:
    seeds = parse_seeds(_SEEDS.value or ("0" if dry_run else "0,1,2"))
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  started = _STARTED_AT.value or time.time()
  window = Window(os.path.abspath(_OUT.value), started + _BUDGET_S.value,
                  dry_run)
  os.makedirs(window.out, exist_ok=True)
  # Side-by-side runs on one GPU: each takes memory as it needs it rather
  # than JAX's default 75 % up front. A compilation cache in OUT makes a
  # resumed call skip the compiles of the last one.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        os.path.join(window.out, "jax_cache"))
  if _DATA_DIR.value:
    os.environ["TFDS_DATA_DIR"] = os.path.abspath(_DATA_DIR.value)
  extra = {}
  if _FASHION_MNIST_DIR.value:
    extra["data.source_dir"] = os.path.abspath(_FASHION_MNIST_DIR.value)
  study = study_grid(seeds, dry_run, extra)
  runs_dir = os.path.join(window.out, "runs")
  from experiments import provenance  # pylint: disable=g-import-not-at-top
  window.summary.update({
      "command": sys.argv, "dry_run": dry_run, "budget_s": _BUDGET_S.value,
      "provenance": provenance.collect(),
      "schedule": schedule(study, _PARALLEL.value)})
  log.info("schedule %s", window.summary["schedule"])
  window.write()
  todo = {
      "study": lambda d: study_phase(study, runs_dir, _PARALLEL.value, d),
      "bench": lambda d: bench_phase(window.out, dry_run, d),
      "notebook": lambda d: notebook_phase(window.out, dry_run, d),
      "emulate": lambda d: emulate_phase(study, runs_dir, _PARALLEL.value,
                                         d)}
  for phase in PHASES:
    if phase in phases:
      window.run(phase, todo[phase])
  window.summary["seconds"] = round(time.time() - started, 1)
  window.write()
  print(json.dumps({p: r.get("status") for p, r in
                    window.summary["phases"].items()}, indent=1))
  if not window.ok:
    raise SystemExit(f"not every phase finished: see "
                     f"{os.path.join(window.out, 'summary.json')}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  _OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
  _BUDGET_S = flags.DEFINE_integer(
      "budget_s", 540, "Wall-clock seconds for the whole call, counted from "
      "--started_at: nothing starts and nothing runs after them.",
      lower_bound=1)
  _STARTED_AT = flags.DEFINE_float(
      "started_at", 0.0, "Unix time the call started (experiments/"
      "gpu_study.sh passes its own start); 0: now.")
  _DRY_RUN = flags.DEFINE_bool("dry_run", False,
                               "Rehearse every phase on a CPU, tiny.")
  _PARALLEL = flags.DEFINE_integer(
      "parallel", 6, "Study runs side by side.", lower_bound=1)
  _SEEDS = flags.DEFINE_string(
      "seeds", "", "Seeds of the compression runs ('' : 0,1,2; 0 in a dry "
      "run).")
  _PHASES = flags.DEFINE_list("phases", list(PHASES),
                              "Which phases to run (in their fixed order).")
  _DATA_DIR = flags.DEFINE_string(
      "data_dir", "", "TFDS data dir for every run ($TFDS_DATA_DIR).")
  _FASHION_MNIST_DIR = flags.DEFINE_string(
      "fashion_mnist_dir", "", "Folder of the four Fashion-MNIST IDX files "
      "(default: the runs' config, Debian's package folder).")
  app.run(main)
