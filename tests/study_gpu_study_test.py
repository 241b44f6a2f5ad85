"""The GPU window's script: the command docs/study.md gives to paste
on a GPU machine runs every phase as a dry run on the CPU, and the runs it
starts are the study's recipe with a schedule that fits the window."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tarfile
import time

import pytest

from experiments import pipeline
from experiments.study import gpu_study, grid
from experiments_fixtures import fmnist_data_dir  # noqa: F401

REPO = pathlib.Path(__file__).resolve().parent.parent


def documented_command() -> str:
  """The one command docs/study.md says to paste on a GPU machine."""
  text = (REPO / "docs" / "study.md").read_text()
  section = text.split("## On a GPU", 1)[1]
  return re.search(r"```bash\n(bash experiments/study/gpu_study\.sh[^\n]*)\n```",
                   section).group(1)


def check_bench(out):
  """The bench phase's files: the four comparisons, device and versions."""
  bench = json.loads((out / "bench.json").read_text())
  assert bench["device"] and bench["versions"]["jax"]
  kinds = [r["name"].split(":")[0] for r in bench["rows"]]
  assert kinds[:3] == ["apply", "crossbar_matmul", "hwaware_step"]
  assert kinds[-1].endswith("_eval") and bench["rows"][-1]["images_per_s"]
  assert "ratio" in (out / "bench.txt").read_text()


# The whole rehearsal (three LeNet-5 pipeline runs, the benchmarks, the
# notebook, two sweeps) compiles for minutes on 2 cores. The fast suite
# covers its parts: the documented command, its summary and bundle
# (test_a_call_without_time_left_still_writes_its_summary), the study and
# emulate phases' scheduling and commands (test_study_and_emulate_phases_*),
# the bench and notebook phases (test_bench_and_notebook_phases_*), the
# pipeline itself (experiments_pipeline_test.py) and the sweeps command
# line (experiments_sweeps_test.py).
@pytest.mark.slow
def test_dry_run_of_the_documented_command(tmp_path, fmnist_data_dir):  # noqa: F811
  out = tmp_path / "window"
  args = shlex.split(documented_command())
  args = [a for a in args if not a.startswith("--out=")]
  env = {**os.environ, "PYTHON": sys.executable,
         "TFDS_DATA_DIR": fmnist_data_dir}
  proc = subprocess.run([*args, f"--out={out}", "--dry_run"], cwd=REPO,
                        env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

  summary = json.loads((out / "summary.json").read_text())
  assert {p: r["status"] for p, r in summary["phases"].items()} == {
      p: "done" for p in gpu_study.PHASES}
  prov = summary["provenance"]
  assert len(prov["commit"]) == 40 and isinstance(prov["dirty"], bool)
  assert "cpu" in prov and "accelerator" in prov["devices"]
  assert summary["schedule"]["runs"] == 2

  # study: every run's results and checkpoints, and the tables.
  names = summary["phases"]["study"]["finished"]
  assert len(names) == 3 and "vgg8_float" in names
  for name in names:
    results = json.loads((out / "runs" / name / "results.json").read_text())
    assert results["provenance"]["cpu"] == prov["cpu"]
    assert (out / "runs" / name / "checkpoints" / "baseline").is_dir()
  tables = json.loads((out / "RESULTS.json").read_text())
  assert "lenet5" in json.dumps(tables)  # the dry run's stand-in model
  assert "vgg8_bn_lk_kd0.5_w_a64" in (out / "RESULTS.md").read_text()

  check_bench(out)

  # notebook: executed (its outputs kept); emulate: one merged JSON a run.
  notebook = json.loads((out / "quickstart.ipynb").read_text())
  assert any(c.get("outputs") for c in notebook["cells"])
  assert len(summary["phases"]["emulate"]["emulated"]) == 2
  for name in summary["phases"]["emulate"]["emulated"]:
    assert (out / "runs" / "sweeps" / f"{name}.json").is_file()

  # The bundle holds the results, not the checkpoints or model files.
  with tarfile.open(out / "bundle.tar.gz") as tar:
    members = tar.getnames()
  assert "summary.json" in members and "bench.json" in members
  assert f"runs/{names[0]}/results.json" in members
  assert not any("checkpoints" in m or m.endswith(".npz") for m in members)


def test_window_runs_are_the_study_recipe_with_a_shorter_schedule():
  full = grid.load_grid(gpu_study.GRID)
  study = {p.name: p for p in grid.select(full, group="study").points}
  window = gpu_study.study_grid((0, 1, 2), dry_run=False, extra={})
  runs = [p for p in window.points if p.base is not None]
  assert len(runs) == 6 and all(p.base == "vgg8_float" for p in runs)
  for p in runs:
    twin = study[p.name.replace("_w_a64", "_long_a64").replace(
        "_w_ste", "_long_emu_ste")]
    config, reference = p.load_config(), twin.load_config()
    pipeline.check(config)  # VGG-8's shapes only: a second
    for key in ("recipe", "compress", "seed"):
      assert config[key] == reference[key], key
    assert (config.share.allocate_ou_ratio
            == reference.share.allocate_ou_ratio)
    assert (config.share.steps, config.finetune.steps) == (2000, 1500)
    assert not config.eval.emulate  # the emulate phase does it, last
  assert {s.run for s in window.sweeps} == {p.name for p in runs}


def test_schedule_fits_the_window():
  window = gpu_study.study_grid((0, 1, 2), dry_run=False, extra={})
  s = gpu_study.schedule(window, parallel=6)
  assert (s["train_steps"], s["share_steps"], s["finetune_steps"]) == (
      3000, 2000, 1500)
  # Even with the six runs' steps one after another on the GPU, the study
  # ends with two of the nine minutes left for the install and the rest.
  assert s["worst_s"] <= 540 - 120
  assert s["best_s"] < s["worst_s"]


def test_plan_arithmetic_and_bad_input():
  rates = gpu_study.Rates(train=100, share=50, finetune=100, startup_s=10,
                          base_compile_s=5, point_host_s=20)
  p = gpu_study.plan(1000, 500, 1000, runs=4, parallel=2, rates=rates)
  # base 10 + 5 + 10; a run's device 10 + 10; two waves of host 30.
  assert (p["base_s"], p["device_s_per_run"], p["waves"]) == (25, 20.0, 2)
  assert p["best_s"] == 25 + 2 * (30 + 20)
  assert p["worst_s"] == 25 + 2 * 30 + 4 * 20
  with pytest.raises(ValueError, match="parallel"):
    gpu_study.plan(1, 1, 1, runs=1, parallel=0)
  with pytest.raises(ValueError, match="--seeds"):
    gpu_study.parse_seeds("0,one")
  with pytest.raises(ValueError, match="no compression runs"):
    gpu_study.schedule(gpu_study.study_grid((7,), False, {}), 6)


def test_unknown_phase_is_refused(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.study.gpu_study", f"--out={tmp_path}",
       "--phases=study,benchmark"], cwd=REPO, capture_output=True,
      text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert "unknown ['benchmark']" in proc.stderr


def test_a_call_without_time_left_still_writes_its_summary(tmp_path):
  # A window cut short still says what happened: every phase skipped for
  # want of time, the summary and the bundle written, a failing exit code.
  # Through the documented command: the script's dry-run path included.
  args = [a for a in shlex.split(documented_command())
          if not a.startswith("--out=")]
  env = {**os.environ, "PYTHON": sys.executable}
  proc = subprocess.run(
      [*args, f"--out={tmp_path}", "--dry_run", "--budget_s=5"], cwd=REPO,
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0
  assert "dry run, nothing installed" in proc.stdout
  summary = json.loads((tmp_path / "summary.json").read_text())
  for phase in gpu_study.PHASES:
    assert summary["phases"][phase]["status"].startswith("skipped:")
  assert summary["schedule"]["runs"] == 2
  assert summary["dry_run"] is True
  prov = summary["provenance"]
  assert len(prov["commit"]) == 40 and isinstance(prov["dirty"], bool)
  assert "cpu" in prov and "accelerator" in prov["devices"]
  with tarfile.open(tmp_path / "bundle.tar.gz") as tar:
    assert "summary.json" in tar.getnames()


def test_study_and_emulate_phases_run_their_commands_in_order(
    tmp_path, monkeypatch):
  """The study and emulate phases of a dry run with every command stubbed
  (the pipeline and the sweeps are tested on their own): the float baseline
  first, the runs from its checkpoint, each finished run's sweep merged."""
  study = gpu_study.study_grid((0,), dry_run=True, extra={})
  runs_dir = tmp_path / "runs"
  calls = []
  real_run = subprocess.run

  def fake_run(command, **kwargs):
    if command[1:3] == ["-m", "experiments.main"]:
      flags = dict(a[2:].split("=", 1) for a in command[3:])
      calls.append(("main", os.path.basename(flags["workdir"]), flags))
      if "config.train.init_checkpoint" in flags:
        # The baseline's checkpoint, of a run finished before this started.
        base = flags["config.train.init_checkpoint"]
        assert base.endswith(os.path.join("checkpoints", "baseline"))
        assert os.path.isfile(os.path.join(os.path.dirname(
            os.path.dirname(base)), "results.json"))
      os.makedirs(flags["workdir"], exist_ok=True)
      with open(os.path.join(flags["workdir"], "results.json"), "w") as f:
        f.write("{}")
    elif command[1:3] == ["-m", "experiments.study.sweeps"]:
      flags = dict(a[2:].split("=", 1) for a in command[3:])
      calls.append(("sweeps", os.path.basename(flags["run"]), flags))
      os.makedirs(os.path.dirname(flags["out"]), exist_ok=True)
      with open(flags["out"], "w") as f:
        json.dump({"run": os.path.basename(flags["run"]), "images": 50,
                   "float": 0.5, "timing_s": {"total": 1.0},
                   "command": " ".join(command)}, f)
    else:
      return real_run(command, **kwargs)
    return subprocess.CompletedProcess(command, 0)

  monkeypatch.setattr(subprocess, "run", fake_run)
  monkeypatch.setattr(
      "experiments.study.results.write_report", lambda runs, out: None)
  result = gpu_study.study_phase(study, str(runs_dir), 6, time.time() + 300)
  assert result["status"] == "done" and not result["unfinished"]
  names = [name for kind, name, _ in calls]
  assert names[0] == "vgg8_float" and len(names) == 3
  assert sorted(result["finished"]) == sorted(names)
  for _, name, flags in calls:
    point = next(p for p in study.points if p.name == name)
    # Every dry-run setting reaches the command line, and each run's
    # command sets what its config loads (the window's recipe).
    for key, value in gpu_study.DRY_RUN_CONFIG.items():
      assert flags[f"config.{key}"] == str(value), (name, key)
    assert flags["config"] == point.config
  allocated = [f for _, n, f in calls if "_a64" in n]
  assert allocated and all(
      f["config.share.allocate_ou_ratio"] == str(gpu_study.DRY_RUN_ALLOCATE)
      for f in allocated)

  calls.clear()
  emulated = gpu_study.emulate_phase(study, str(runs_dir), 6,
                                     time.time() + 300)
  assert emulated["status"] == "done" and len(emulated["emulated"]) == 2
  for _, run, flags in calls:
    for key, value in gpu_study.DRY_RUN_SWEEP.items():
      assert flags[key] == str(value)
  for name in emulated["emulated"]:
    merged = json.loads((runs_dir / "sweeps" / f"{name}.json").read_text())
    assert merged["images"] == 50
  # Called again, nothing runs twice: finished runs and parts are skipped.
  calls.clear()
  gpu_study.study_phase(study, str(runs_dir), 6, time.time() + 300)
  gpu_study.emulate_phase(study, str(runs_dir), 6, time.time() + 300)
  assert calls == []


def test_bench_and_notebook_phases_of_a_dry_run(tmp_path, monkeypatch):
  """The benchmarks (their small sizes) and the quickstart up to its
  imports, as the window's dry run runs them."""
  monkeypatch.chdir(REPO)  # the notebook's path is the checkout's
  for var in ("RSJAX_NOTEBOOK_QUICK", "PYTHONPATH"):
    monkeypatch.setenv(var, os.environ.get(var, ""))  # restored after
  deadline = time.time() + 300
  assert gpu_study.bench_phase(str(tmp_path), True, deadline) == {
      "status": "done"}
  check_bench(tmp_path)

  assert gpu_study.notebook_phase(str(tmp_path), True, deadline) == {
      "status": "done"}
  notebook = json.loads((tmp_path / "quickstart.ipynb").read_text())
  assert len(notebook["cells"]) == gpu_study.DRY_RUN_NOTEBOOK_CELLS
  assert any(c.get("outputs") for c in notebook["cells"])
