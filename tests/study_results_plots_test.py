"""Tests of experiments/study/results_plots.py on synthetic results.json files."""

import json
import os

import pytest

from experiments.study import results
from study_results_fixtures import (
    fixture_runs, priced_runs)


def test_energy_plot_and_json(tmp_path):
  runs_dir = str(tmp_path / "priced")
  for r in priced_runs():
    os.makedirs(os.path.join(runs_dir, r["name"]))
    with open(os.path.join(runs_dir, r["name"], "results.json"), "w") as f:
      json.dump({k: v for k, v in r.items() if k != "name"}, f)
  out = str(tmp_path / "R.md")
  results.write_report(runs_dir, out)
  text = open(out).read()
  assert "### vgg8: energy, latency and area per inference" in text
  assert "![accuracy vs energy per inference](R_energy.png)" in text
  assert os.path.getsize(str(tmp_path / "R_energy.png")) > 1000
  summary = json.load(open(tmp_path / "R.json"))["models"]["vgg8"]
  # p (prune only, 0.2 pp loss) is the headline: 600 nJ, pruned layout.
  head = summary["headline"]
  assert head["run"] == "p" and head["layout"] == "pruned"
  assert head["energy_pj"] == 600e3 and head["latency_ns"] == 60e3
  assert summary["hardware_cost"][0]["loss_pp"] is None
  assert summary["hardware_cost"][1]["loss_pp"] == pytest.approx(0.2)
  assert [(c["row"], c["run"], c["layout"], c["energy_pj"])
          for c in summary["hardware_cost"]] == [
              ("dense", "b", "dense", 1000e3),
              ("pruned", "p", "pruned", 600e3),
              ("shared", "s2", "shared", 800e3),
              ("pruned + shared", "b", "shared", 300e3)]
  # Runs without any hardware cost: no energy table, no energy plot.
  results.write_report(fixture_runs(tmp_path), str(tmp_path / "bare.md"))
  assert "energy" not in open(str(tmp_path / "bare.md")).read()
  assert not os.path.exists(str(tmp_path / "bare_energy.png"))
