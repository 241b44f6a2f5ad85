"""Runs a grid of experiments: named points and emulation sweeps.

  python -m experiments.study.grid [--grid=GRID_FILE] [--runs_dir=DIR] \
      [--only=REGEX] [--parallel=2] [--deadline_s=3600] [--nosweeps] \
      [--list] [--report]

``--grid`` and ``--runs_dir`` default to the Fashion-MNIST study's
(``python -m experiments.study`` is this with ``--report`` on).

A grid file defines ``get_grid() -> Grid``: :class:`Point` s (one pipeline
run each: a config file and overrides, optionally starting from another
point's float baseline) and :class:`Sweep` s (an emulation study of a
finished point, in parts). The driver runs every selected point as its own
process (``python -m experiments.main``), ``--parallel`` at a time, points
that start from a baseline after that baseline's run; it skips points whose
``results.json`` exists (a killed point resumes from its checkpoints), then
runs the sweep parts the same way and merges each sweep's parts. It is the
same on a CPU or a GPU host: what a point costs is only in its config.
With ``--report`` it then writes RESULTS.md (and RESULTS.json) from the
runs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

# The Fashion-MNIST study of RESULTS.md: its grid and its kept runs.
STUDY_GRID = "experiments/study/fashion_mnist_grid.py"
STUDY_RUNS = "experiments/study/runs"


@dataclasses.dataclass(frozen=True)
class Point:
  """One pipeline run.

  Attributes:
    name: its workdir's name under the runs folder.
    config: the config file (``experiments/configs/NAME.py``).
    overrides: ``{'share.steps': 2000, ...}`` config overrides.
    base: the point whose float baseline it starts from (its
      ``checkpoints/baseline``), or None to train its own.
    group: a label to select points by (``--group``).
  """

  name: str
  config: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  base: str | None = None
  group: str = ""

  def command(self, runs_dir: str) -> list[str]:
    overrides = dict(self.overrides)
    if self.base is not None:
      overrides["train.init_checkpoint"] = os.path.join(
          runs_dir, self.base, "checkpoints", "baseline")
    return [sys.executable, "-m", "experiments.main",
            f"--config={self.config}",
            f"--workdir={os.path.join(runs_dir, self.name)}",
            *(f"--config.{k}={_flag_value(v)}" for k, v in overrides.items())]

  def load_config(self):
    """The config the point's run gets: its file's ``get_config()`` with
    the overrides set (as the command line sets them; the baseline's
    ``train.init_checkpoint`` left out)."""
    spec = importlib.util.spec_from_file_location("_point_config",
                                                  self.config)
    if spec is None or not os.path.isfile(self.config):
      raise FileNotFoundError(f"config file {self.config} does not exist")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in self.overrides.items():
      *path, last = key.split(".")
      node = config
      for part in path:
        node = node[part]
      node[last] = value
    return config


@dataclasses.dataclass(frozen=True)
class Sweep:
  """An emulation study of a finished point, in parts merged into one JSON.

  Attributes:
    name: the merged file's name (``runs/sweeps/NAME.json``).
    run: the point it emulates.
    flags: ``experiments.study.sweeps`` flags shared by every part.
    parts: ``{part name: flags of that part}``; one part runs everything.
    group: as :attr:`Point.group`.
  """

  name: str
  run: str
  flags: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  parts: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=lambda: {"all": {}})
  group: str = ""

  def part_path(self, runs_dir: str, part: str) -> str:
    return os.path.join(runs_dir, "sweeps", "parts", self.name,
                        f"{part}.json")

  def command(self, runs_dir: str, part: str) -> list[str]:
    flags = {**self.flags, **self.parts[part]}
    return [sys.executable, "-m", "experiments.study.sweeps",
            f"--run={os.path.join(runs_dir, self.run)}",
            f"--out={self.part_path(runs_dir, part)}",
            *(f"--{k}={_flag_value(v)}" for k, v in flags.items())]


@dataclasses.dataclass(frozen=True)
class Grid:
  points: Sequence[Point] = ()
  sweeps: Sequence[Sweep] = ()

  def __post_init__(self):
    names = [p.name for p in self.points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
      raise ValueError(f"grid points named twice: {dup}")
    bad = [p.name for p in self.points
           if p.base is not None and p.base not in names]
    if bad:
      raise ValueError(f"points {bad} start from a base that is not a point")
    unknown = [s.name for s in self.sweeps if s.run not in names]
    if unknown:
      raise ValueError(f"sweeps {unknown} emulate a run that is not a point")


def _flag_value(v) -> str:
  if isinstance(v, (list, tuple)):
    return repr(tuple(v))
  return str(v)


def load_grid(path: str) -> Grid:
  """``get_grid()`` of a grid file."""
  spec = importlib.util.spec_from_file_location("_grid_config", path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"grid file {path} does not exist")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_grid()


def select(grid: Grid, only: str = "", group: str = "") -> Grid:
  """The points and sweeps matching ``only`` (regex) and ``group``, with
  the baselines the selected points start from."""
  regex = re.compile(only or "")
  keep = lambda x: regex.search(x.name) and (not group or x.group == group)
  points = [p for p in grid.points if keep(p)]
  names = {p.name for p in points}
  bases = [p for p in grid.points if p.name not in names and p.name in
           {q.base for q in points}]
  return Grid(points=[p for p in grid.points if p in points or p in bases],
              sweeps=[s for s in grid.sweeps if keep(s)])


def _run(command: list[str], log_path: str, deadline: float | None) -> bool:
  """Runs one job to completion (or the deadline); True on success."""
  timeout = None if deadline is None else deadline - time.time()
  if timeout is not None and timeout < 10:
    log.info("not started (deadline): %s", log_path)
    return False
  os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
  t0 = time.time()
  with open(log_path, "a") as f:
    f.write(f"$ {' '.join(command)}\n")
    f.flush()
    try:
      rc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT,
                          timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired:
      rc = "killed at the deadline"
  log.info("%s %s (%.0f s, log %s)", "done" if rc == 0 else f"FAILED ({rc})",
           os.path.basename(log_path), time.time() - t0, log_path)
  return rc == 0


def run_points(grid: Grid, runs_dir: str, parallel: int = 1,
               deadline: float | None = None) -> dict[str, bool]:
  """Runs the grid's unfinished points; ``{name: finished}``."""
  finished = {p.name: os.path.isfile(os.path.join(runs_dir, p.name,
                                                  "results.json"))
              for p in grid.points}
  todo = [p for p in grid.points if not finished[p.name]]
  log.info("%d points, %d to run", len(grid.points), len(todo))
  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    running: dict[concurrent.futures.Future, Point] = {}
    while todo or running:
      ready = [p for p in todo if p.base is None or finished.get(p.base)]
      blocked = [p for p in todo if p.base is not None
                 and p.base not in {q.name for q in todo}
                 and p.base not in {q.name for q in running.values()}
                 and not finished.get(p.base)]
      for p in blocked:  # its baseline failed: it cannot start
        log.info("skipped %s: its base %s did not finish", p.name, p.base)
        todo.remove(p)
      for p in ready[:max(0, parallel - len(running))]:
        todo.remove(p)
        log_path = os.path.join(runs_dir, f"{p.name}.log")
        running[pool.submit(_run, p.command(runs_dir), log_path,
                            deadline)] = p
      if not running:
        continue
      done, _ = concurrent.futures.wait(
          running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        finished[running.pop(future).name] = future.result()
  return finished


def run_sweeps(grid: Grid, runs_dir: str, parallel: int = 1,
               deadline: float | None = None) -> dict[str, str]:
  """Runs the sweeps' unfinished parts and merges each sweep;
  ``{sweep: merged JSON path}`` for the sweeps with at least one part."""
  jobs = [(s, part) for s in grid.sweeps for part in s.parts
          if os.path.isfile(os.path.join(runs_dir, s.run, "results.json"))
          and not os.path.isfile(s.part_path(runs_dir, part))]
  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    list(pool.map(lambda job: _run(
        job[0].command(runs_dir, job[1]),
        job[0].part_path(runs_dir, job[1])[:-len(".json")] + ".log",
        deadline), jobs))
  merged = {}
  # pylint: disable=g-import-not-at-top
  from experiments import workdir as workdir_lib
  from experiments.study import sweeps as sweeps_lib
  # pylint: enable=g-import-not-at-top
  for s in grid.sweeps:
    present = {part: s.part_path(runs_dir, part) for part in s.parts
               if os.path.isfile(s.part_path(runs_dir, part))}
    if not present:
      continue
    parts = []
    for path in present.values():
      with open(path) as f:
        parts.append(json.load(f))
    missing = [p for p in s.parts if p not in present]
    out = os.path.join(runs_dir, "sweeps", f"{s.name}.json")
    workdir_lib.write_file(out, json.dumps(
        sweeps_lib.merge(parts, missing), indent=1))
    merged[s.name] = out
  return merged


def _main(f):
  """Runs the grid the parsed flags ``f`` select."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  grid = select(load_grid(f.grid), f.only, f.group)
  if f.list:
    for p in grid.points:
      done = os.path.isfile(os.path.join(f.runs_dir, p.name,
                                         "results.json"))
      print(f"{'done' if done else 'todo'}  {' '.join(p.command(f.runs_dir))}")
    for s in grid.sweeps:
      for part in s.parts:
        print(f"sweep {s.name}/{part}: "
              f"{' '.join(s.command(f.runs_dir, part))}")
    return
  deadline = time.time() + f.deadline_s if f.deadline_s else None
  os.makedirs(f.runs_dir, exist_ok=True)
  finished = run_points(grid, f.runs_dir, f.parallel, deadline)
  if f.sweeps:
    run_sweeps(grid, f.runs_dir, f.parallel, deadline)
  failed = [n for n, ok in finished.items() if not ok]
  if f.report:
    # pylint: disable=g-import-not-at-top
    from experiments.study import results
    from experiments.study import sweep_report
    # pylint: enable=g-import-not-at-top
    results.write_report(f.runs_dir, f.out)
    sweeps_dir = os.path.join(f.runs_dir, "sweeps")
    if os.path.isdir(sweeps_dir):
      sweep_report.write_report(sweeps_dir, f.out)
  if failed:
    raise SystemExit(f"unfinished points: {failed}")


def main(report: bool = False):
  """Parses the flags and runs the grid (``report``: ``--report``'s
  default)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("grid", STUDY_GRID, "Grid file (get_grid()).")
  flags.DEFINE_string("runs_dir", STUDY_RUNS, "Folder of the workdirs.")
  flags.DEFINE_string("only", "", "Regex over point/sweep names.")
  flags.DEFINE_string("group", "", "Only points of this group.")
  flags.DEFINE_integer("parallel", 1, "Jobs at a time.")
  flags.DEFINE_integer(
      "deadline_s", 0, "Start nothing after this many seconds and stop "
      "running jobs then (they resume on the next call); 0: none.")
  flags.DEFINE_bool("list", False, "Print the commands and whether each "
                    "point is done; run nothing.")
  flags.DEFINE_bool("sweeps", True, "Run the selected sweeps after the "
                    "points (--nosweeps: points only).")
  flags.DEFINE_bool("report", report, "Write --out from the runs.")
  flags.DEFINE_string("out", "RESULTS.md", "With --report.")
  app.run(lambda argv: _main(flags.FLAGS))


if __name__ == "__main__":
  main()
